"""The Hub dataset asset (`publish_job`) and `reconcile_job`, thin wrappers over stratum_core.publish."""


import dagster as dg

from stratum_core.passes import DEFAULT_PASSES
from stratum_dagster.resources import HubResource, StratumResource


@dg.asset(name="hub_dataset", deps=["metadata", *DEFAULT_PASSES], group_name="publish", kinds={"huggingface"},
          description="The chosen layers of the dataset, published to a HuggingFace dataset repo.")
def hub_dataset(context: dg.AssetExecutionContext, stratum: StratumResource, hub: HubResource) -> dg.MaterializeResult:
    from stratum_core.publish import publish

    result = publish(stratum.output_dir, hub.publish_config(), token=hub.token, endpoint=hub.endpoint)
    return dg.MaterializeResult(metadata={
        "repo_id": result.repo_id, "commits": len(result.commits), "total_images": result.total_images,
        "uploaded_files": len(result.uploaded_files), "skipped_chunks": len(result.skipped_chunks),
        "bytes_uploaded": result.bytes_uploaded, "images_per_layer": dg.MetadataValue.json(result.images)})


@dg.op(description="Rebuild manifest.json and the dataset card from the files in the Hub repo.")
def reconcile_hub(context: dg.OpExecutionContext, hub: HubResource) -> dg.Output[None]:
    from stratum_core.publish import reconcile

    result = reconcile(hub.publish_config(), token=hub.token, endpoint=hub.endpoint)
    context.log.info("reconciled %s: changed=%s commit=%s", result.repo_id, result.changed, result.committed)
    return dg.Output(None, metadata={"repo_id": result.repo_id, "changed": result.changed,
                                     "commit": result.committed or "-", "problems": len(result.problems),
                                     "total_images": result.manifest.get("total_images", 0)})


@dg.job(description="Rebuild the Hub repo's manifest and card from its files.")
def reconcile_job() -> None:
    reconcile_hub()


publish_job = dg.define_asset_job("publish_job", selection=[hub_dataset],
                                  description="Publish the dataset's chosen layers to the Hub.")

defs = dg.Definitions(assets=[hub_dataset], jobs=[publish_job, reconcile_job])
