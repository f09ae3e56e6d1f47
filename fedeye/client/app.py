"""FedEye ClientApp: trains and evaluates at one hospital site (Message API).

The site folder comes from the node config key ``site-dir`` (deployment: each
SuperNode is started with ``--node-config "site-dir='/data/site'"``) or, in
simulation, from ``partition-id`` over the sorted sub-folders of
``data.root`` in the run config.

Replies carry only model arrays, aggregate metrics and the site's display
name: never images, per-image predictions, labels or patient identifiers.
"""

from __future__ import annotations

import json

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedeye.client.site import SiteJob
from fedeye.client.training import evaluate_local, train_local
from fedeye.config import RunConfig
from fedeye.models.io import model_state

app = ClientApp()


def _job(msg: Message, context: Context) -> SiteJob:
    config = msg.content["config"]
    cfg = RunConfig.model_validate(json.loads(str(config["run-config"])))
    return SiteJob.resolve(cfg, dict(context.node_config))


def _reply(msg: Message, job: SiteJob, metrics: dict[str, float | int], arrays: ArrayRecord | None = None) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics), "site": ConfigRecord({"name": job.site_name})})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Load the global arrays, train on the local train split, return the update."""
    job = _job(msg, context)
    model = job.model(msg.content["arrays"])
    server_round = int(msg.content["config"]["server-round"])
    result = train_local(model, job.dataset("train"), cfg=job.cfg.training, server_round=server_round)
    metrics = {"loss": result.loss, "num-examples": result.num_examples, "train-seconds": result.seconds}
    return _reply(msg, job, metrics, ArrayRecord(model_state(model)))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global arrays on the split named in the message (default val)."""
    job = _job(msg, context)
    model = job.model(msg.content["arrays"])
    split = str(msg.content["config"].get("split", job.cfg.data.eval_split))
    result = evaluate_local(model, job.dataset(split), batch_size=job.cfg.training.batch_size * 2)
    metrics = {"loss": result.loss, "num-examples": result.num_examples, "num-positive": result.num_positive}
    metrics.update(result.metrics)
    return _reply(msg, job, metrics)
