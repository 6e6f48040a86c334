"""``kvs-peer record``: a service recording many channels to S3, shardable across replicas.

Parts: :mod:`.config` (the TOML file, pure), :mod:`.shard` (rendezvous hashing, pure),
:mod:`.spool` (segment files on disk and their limits), :mod:`.upload` (boto3 uploads in
threads, retried until confirmed), :mod:`.worker` (a viewer per channel in one process) and
:mod:`.service` (the supervisor: worker processes, spool, uploads). See docs/deploy.md.
"""

from .config import OutputConfig, RecordConfig, S3Config, load_config, parse_config
from .shard import Shard, owner, parse_shard, select

__all__ = [
    "OutputConfig",
    "RecordConfig",
    "S3Config",
    "Shard",
    "load_config",
    "owner",
    "parse_config",
    "parse_shard",
    "select",
]
