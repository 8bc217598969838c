"""The Hub dataset asset (`publish_job`) and `reconcile_job`, thin wrappers over stratum_core.publish."""


import dagster as dg
from pydantic import Field

from stratum_core.passes import DEFAULT_PASSES
from stratum_dagster.resources import HubResource, StratumResource


class ReconcileConfig(dg.Config):
    """Run config of `reconcile_hub` (`ops: reconcile_hub: config: {dry_run: true}`)."""

    dry_run: bool = Field(default=False, description="rebuild and report the manifest, change nothing in the repo")


@dg.asset(name="hub_dataset", deps=["metadata", *DEFAULT_PASSES], group_name="publish", kinds={"huggingface"},
          description="The chosen layers of the dataset, published to a HuggingFace dataset repo: each run adds "
                      "what is new since the last one (the finished shards after the last published position).")
def hub_dataset(context: dg.AssetExecutionContext, stratum: StratumResource, hub: HubResource) -> dg.MaterializeResult:
    from stratum_core.publish import publish_new
    from stratum_core.publish.publisher import shard_ready

    config = hub.publish_config()
    result = publish_new(stratum.output_dir, config, token=hub.hub_token(), endpoint=hub.endpoint,
                         ready=shard_ready(stratum.output_dir, config.layers))
    added = sorted({f.rsplit("/", 1)[-1].rsplit(".", 1)[0] for f in result.uploaded_files})
    context.log.info(f"{result.repo_id}: added shards {', '.join(result.shards) or 'none'}; "
                     f"ranges {', '.join(added) or 'none'}")
    return dg.MaterializeResult(metadata={
        "repo_id": result.repo_id, "commits": len(result.commits), "total_images": result.total_images,
        "uploaded_files": len(result.uploaded_files), "skipped_chunks": len(result.skipped_chunks),
        "bytes_uploaded": result.bytes_uploaded, "images_per_layer": dg.MetadataValue.json(result.images),
        "shards_added": dg.MetadataValue.json(result.shards), "ranges_added": dg.MetadataValue.json(added)})


@dg.op(description="Rebuild manifest.json and the dataset card from the files in the Hub repo.")
def reconcile_hub(context: dg.OpExecutionContext, config: ReconcileConfig, hub: HubResource) -> dg.Output[None]:
    from stratum_core.publish import reconcile

    result = reconcile(hub.publish_config(), dry_run=config.dry_run, token=hub.hub_token(), endpoint=hub.endpoint)
    for problem in result.problems:
        context.log.warning(f"reconcile: {problem}")
    if not result.changed:
        action = "no change to"
    else:
        action = "would update" if config.dry_run else f"updated (commit {result.committed})"
    context.log.info(f"{result.repo_id}: {action} manifest.json and README.md")
    return dg.Output(None, metadata={"repo_id": result.repo_id, "dry_run": config.dry_run, "changed": result.changed,
                                     "commit": result.committed or "-", "problems": len(result.problems),
                                     "total_images": result.manifest.get("total_images", 0),
                                     "manifest": dg.MetadataValue.json(result.manifest)})


@dg.job(description="Rebuild the Hub repo's manifest and card from its files (dry_run: only report them).")
def reconcile_job() -> None:
    reconcile_hub()


publish_job = dg.define_asset_job("publish_job", selection=[hub_dataset],
                                  description="Publish the dataset's chosen layers to the Hub.")

defs = dg.Definitions(assets=[hub_dataset], jobs=[publish_job, reconcile_job])
