"""LlamaIndex plugin: a ``BaseNodePostprocessor`` that compresses each retrieved node.

    from ctxgate.llamaindex import CtxgateNodePostprocessor

    engine = index.as_query_engine(node_postprocessors=[CtxgateNodePostprocessor(rate=0.25)])

Each node keeps its id, relationships, metadata and score; only its text is compressed (nodes are
never joined into one, as llmlingua's postprocessor does). The node objects are copied, not mutated,
so a docstore that hands out its own objects is never rewritten. Compression info goes into
metadata under ``ctxgate`` and is excluded from the LLM and embedding views of the node, so it
costs no prompt tokens. No query is needed for question-agnostic methods.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

try:
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
    from pydantic import PrivateAttr
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ImportError(
        "ctxgate.llamaindex needs llama-index-core; install it with: pip install 'ctxgate[llamaindex]'"
    ) from exc

from .rag import Mode, Order, RAGCompressor, RAGResult

log = logging.getLogger("ctxgate.llamaindex")


class CtxgateNodePostprocessor(BaseNodePostprocessor):
    """Compresses retrieved nodes for the query (if any), in-process or through a ctxgate sidecar.

    The fields mirror ``RAGCompressor``; pass ``rag=`` to share one that is already configured.
    """

    mode: Mode = "local"
    url: str | None = None
    method: str = "auto"
    rate: float | Literal["auto"] | None = None
    target_tokens: int | None = None
    order: Order = "original"
    strict: bool = False
    timeout: float = 30.0
    tokenizer: str | None = None
    options: dict[str, Any] = {}
    metadata_key: str = "ctxgate"
    rag: RAGCompressor | None = None

    _rag: RAGCompressor = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        self._rag = self.rag or RAGCompressor.from_settings(self)

    @classmethod
    def class_name(cls) -> str:
        return "CtxgateNodePostprocessor"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        docs = _inputs(nodes)
        return self._outputs(nodes, self._rag.compress(docs, question=_question(query_bundle)))

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        docs = _inputs(nodes)
        return self._outputs(nodes, await self._rag.acompress(docs, question=_question(query_bundle)))

    def _outputs(self, nodes: list[NodeWithScore], result: RAGResult) -> list[NodeWithScore]:
        if result.dropped:
            log.info(
                "ctxgate dropped %d of %d nodes (positions %s)",
                len(result.dropped),
                len(nodes),
                [d.index for d in result.dropped],
            )
        key = self.metadata_key
        out: list[NodeWithScore] = []
        for d in result.documents:
            src = nodes[d.index]
            node = src.node.model_copy()
            node.set_content(d.text)
            if key in src.node.metadata:
                log.warning("node metadata already has a %r key; ctxgate info not added (set metadata_key)", key)
            else:
                node.metadata = {**src.node.metadata, key: result.info(d)}
                node.excluded_llm_metadata_keys = [*src.node.excluded_llm_metadata_keys, key]
                node.excluded_embed_metadata_keys = [*src.node.excluded_embed_metadata_keys, key]
            out.append(NodeWithScore(node=node, score=src.score))
        return out


def _question(query_bundle: QueryBundle | None) -> str | None:
    return (query_bundle.query_str or None) if query_bundle is not None else None


def _inputs(nodes: list[NodeWithScore]) -> list[dict[str, Any]]:
    docs = []
    for i, n in enumerate(nodes):
        node = getattr(n, "node", None)
        if node is None or not hasattr(node, "set_content"):
            raise TypeError(f"nodes[{i}] must be a NodeWithScore around a text node, got {type(n).__name__}")
        text = getattr(node, "text", None)
        if not isinstance(text, str):
            raise TypeError(f"nodes[{i}].node.text must be str, got {type(text).__name__}")
        docs.append({"text": node.get_content(metadata_mode=MetadataMode.NONE), "id": node.node_id})
    return docs


__all__ = ["CtxgateNodePostprocessor"]
