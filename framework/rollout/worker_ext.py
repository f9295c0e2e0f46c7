"""Methods tokenbridge adds to every vLLM worker (``LLM(worker_extension_cls=...)``).

vLLM mixes this class into its worker class, so ``self`` is the worker (``self.reload_weights``,
``self.start_weight_update`` … are the worker's own). Names carry a ``tokenbridge_`` prefix because
vLLM refuses an extension attribute that collides with a worker attribute (``update_weights``
already exists). Called through ``LLM.collective_rpc(name, ...)``; arguments travel msgpack-encoded,
so weights come as ``bytes`` (tensors would arrive as nested lists).
"""

from __future__ import annotations

from typing import Any


class TokenbridgeWorkerExtension:
    def tokenbridge_load_weights(self, blob: bytes) -> int:
        """In-place reload from a safetensors byte string of the full HF-named state dict.

        Goes through the worker's ``reload_weights`` (layerwise reload: checkpoint-format weights
        are loaded and then re-processed into kernel format). Plain ``model.load_weights`` is not
        enough on CPU: after start-up the weights are already processed (e.g. repacked), and
        loading checkpoint-format tensors into them fails. Returns the number of tensors received.
        """
        from safetensors.torch import load

        state_dict = load(bytes(blob))
        if not state_dict:
            raise ValueError("weight blob holds no tensors")
        self.reload_weights(weights_iterator=iter(state_dict.items()))  # type: ignore[attr-defined]
        return len(state_dict)

    def tokenbridge_receive_weights(self, update_info: dict[str, Any]) -> None:
        """One whole update over vLLM's native weight-transfer engine (NCCL / IPC; configured with
        ``weight_transfer_config``): start -> receive all buckets -> finish, in ONE control-plane
        round trip, so a sync can never be left half-open between two RPCs. Blocks until the
        trainer has broadcast every bucket (the caller bounds it with the RPC timeout).
        """
        self.start_weight_update()  # type: ignore[attr-defined]
        self.update_weights(update_info)  # type: ignore[attr-defined]
        self.finish_weight_update()  # type: ignore[attr-defined]
