"""The code location is the `defs/` folder, loaded the way dg projects load it (`dg.load_from_defs_folder`)."""

from __future__ import annotations

import importlib
import pkgutil

import dagster as dg

import stratum_dagster.defs


def defs_modules() -> list:
    """Every module under stratum_dagster/defs/."""
    return [importlib.import_module(m.name)
            for m in pkgutil.walk_packages(stratum_dagster.defs.__path__, "stratum_dagster.defs.")]


def asset_keys(asset) -> set:
    """The keys an assets definition makes, or the one key of a (observable) source asset."""
    return set(asset.keys) if hasattr(asset, "keys") else {asset.key}


def test_every_definition_of_every_defs_module_is_in_the_code_location():
    from stratum_dagster.definitions import defs

    location = defs()
    graph = location.resolve_asset_graph()
    jobs = {j.name for j in location.resolve_all_job_defs()}
    sensors = {s.name for s in location.sensors}
    found = 0
    for module in defs_modules():
        for area in [getattr(module, "defs", None), getattr(module, "resources", None)]:
            area = area() if callable(area) else area
            if not isinstance(area, dg.Definitions):
                continue
            found += 1
            assert {k for a in area.assets or () for k in asset_keys(a)} <= graph.get_all_asset_keys(), module.__name__
            assert {c for c in area.asset_checks or () for c in c.check_keys} <= graph.asset_check_keys, module.__name__
            assert {j.name for j in area.jobs or ()} <= jobs, module.__name__
            assert {s.name for s in area.sensors or ()} <= sensors, module.__name__
            assert set(area.resources or {}) <= set(location.resources), module.__name__
    assert found >= 5  # shards, passes, publish, sources, resources


def test_the_code_location_binds_the_three_resources_and_runs_in_process_by_default():
    from stratum_dagster.defs.resources import RESOURCES
    from stratum_dagster.definitions import defs

    location = defs()
    assert set(location.resources) == set(RESOURCES) == {"stratum", "caption_server", "hub"}
    assert location.resolve_implicit_global_asset_job_def().executor_def.name == "in_process"
