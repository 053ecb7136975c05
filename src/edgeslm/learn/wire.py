"""Count what a Flower run puts on the wire: a ``Grid`` that measures every message it sends and every reply.

Flower's strategies and workflows talk to the clients only through the ``Grid`` (``send_and_receive``), whatever
the protocol: one train message per client for FedAvg, four exchanges per round for SecAgg+ (keys, key shares,
masked vectors, unmasking shares). Wrapping the grid therefore measures both the same way: the size of each
message's content serialized as Flower's protobuf ``RecordDict`` (what crosses the network, less the few dozen
bytes of metadata and transport framing), per round and per node. The round is the message's ``group_id`` (the
legacy workflows set it); the Message-API strategies leave it empty and send one batch per round, so there the
round is the number of the batch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

__all__ = ["CountingGrid"]


def _size(msg: Message) -> int:
    from flwr.common.serde import recorddict_to_proto

    return int(recorddict_to_proto(msg.content).ByteSize()) if msg.has_content() else 0


class CountingGrid(Grid):
    """Delegates to ``grid``; records bytes down (server to node) and up (node to server) per round and node."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        # round -> node -> [down, up, exchanges]
        self.bytes: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0, 0]))
        self._batches = 0

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        sent = list(messages)
        if not sent:
            return []
        self._batches += 1
        for msg in sent:
            entry = self.bytes[msg.metadata.group_id or str(self._batches)][msg.metadata.dst_node_id]
            entry[0] += _size(msg)
            entry[2] += 1
        replies = list(self.grid.send_and_receive(sent, timeout=timeout))
        # the grid stamped each sent message with its id; a reply names it. An error reply for a node that vanished
        # comes from the SuperLink (src 0), so the node it answers for is the one the request went to.
        asked = {m.metadata.message_id: m.metadata.dst_node_id for m in sent}
        for msg in replies:
            node = asked.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
            self.bytes[msg.metadata.group_id or str(self._batches)][node][1] += _size(msg)
        return replies

    def per_round(self) -> dict[str, dict[str, Any]]:
        """``{round: {nodes, exchanges, down: [bytes per node], up: [bytes per node]}}``."""
        return {
            rnd: {
                "nodes": len(nodes),
                "exchanges": max(e[2] for e in nodes.values()),
                "down": [e[0] for e in nodes.values()],
                "up": [e[1] for e in nodes.values()],
            }
            for rnd, nodes in self.bytes.items()
        }

    # the rest: plain delegation
    def set_run(self, run: Any) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        return self.grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)
