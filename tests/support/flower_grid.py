"""A fake Flower grid for strategy tests: it answers the strategies' partition query, each node with the
partition id it claims (import after ``pytest.importorskip("flwr")``)."""
import time

from flwr.app import ConfigRecord, Message, MessageType, Metadata, RecordDict


class PartitionGrid:
    def __init__(self, claims: dict):
        self.claims = dict(claims)          # node id -> the partition id it reports

    def get_node_ids(self):  # noqa: D102
        return sorted(self.claims)

    def send_and_receive(self, msgs):  # noqa: D102 - the partition query
        out = []
        for m in msgs:
            n = m.metadata.dst_node_id
            md = Metadata(run_id=0, message_id="", src_node_id=n, dst_node_id=0, reply_to_message_id="",
                          group_id="", created_at=time.time(), ttl=60.0, message_type=MessageType.QUERY)
            out.append(Message(content=RecordDict({"config": ConfigRecord({"partition-id": self.claims[n]})}),
                               metadata=md))
        return out
