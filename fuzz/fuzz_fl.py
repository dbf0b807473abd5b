"""Fuzz the FL transport's upload parser: ``nnc.fl.ServerCodec.receive(client, bytes)``.

This is the entry point that sees bytes from untrusted FL clients. Contract: it returns the dense float32
delta, or raises ``nnc.fl.RejectedUpdateError`` (an ``nnc.NNCError``) and resets that client's state.
The server's global model is the 64x96 ``delta.weight`` of the reference TCA sequence, so the seeds
(conformance/vectors/*.nnc plus tca_seq/*.nnc and a real client upload written by fuzz/run.sh) include
uploads that it accepts. After every input the client's decoder state is dropped, so inputs are
independent; every 64 inputs an honest upload must still be accepted (the server was not wedged).
"""
import sys

from _common import main

_server = None
_honest = None
_count = 0


def _setup():
    import numpy as np
    from nnc.fl import ClientCodec, ServerCodec
    base = {"delta.weight": np.zeros((64, 96), np.float32)}
    server = ServerCodec(base)
    client = ClientCodec(base)
    rng = np.random.default_rng(0)
    honest = client.encode({"delta.weight": rng.standard_normal((64, 96)).astype(np.float32) * 0.1}).payload
    server.receive("honest", honest)
    server.decoders.pop("honest", None)
    return server, honest


def TestOneInput(data: bytes) -> None:  # noqa: N802
    global _server, _honest, _count
    from nnc.fl import RejectedUpdateError
    if _server is None:
        _server, _honest = _setup()
    try:
        delta = _server.receive("fuzz", data)
        assert set(delta) == {"delta.weight"} and delta["delta.weight"].shape == (64, 96)
    except RejectedUpdateError:
        pass
    _server.decoders.pop("fuzz", None)
    _server.pending_reset.discard("fuzz")
    _count += 1
    if _count % 64 == 0:
        _server.receive("honest", _honest)
        _server.decoders.pop("honest", None)


if __name__ == "__main__":
    main(TestOneInput, extra_imports=("nnc.fl", "nnc.fl.transport", "nnc.describe", "nnc.conformance.checker"))
