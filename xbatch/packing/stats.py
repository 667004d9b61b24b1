"""What a packer did: counts users read to trust it."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class PackingStats:
    """Running totals of one packer (one iterator, or one bulk call).

    Attributes:
      rows: packed rows emitted.
      documents: input documents (or items) consumed.
      pieces: packed pieces; a split document counts once per piece.
      tokens: real (non-padding) cells written into rows, summed over the first feature
        (for the LLM packer: document tokens plus their end-of-document tokens).
      capacity: cells offered by the emitted rows (rows x row length of the first feature).
      tokens_truncated: tokens dropped by ``long_documents="truncate"``.
      documents_split: documents cut into more than one piece by ``"split"``.
      loss_tokens: targets trained on, the cells with ``targets_segmentation != 0`` (LLM
        packers only; 0 for the grain drop-ins). Without loss masks this is ``tokens``
        (``shift="inputs"``) or ``tokens - rows`` (``shift="targets"``: a row's first
        token is no target).
    """

    rows: int = 0
    documents: int = 0
    pieces: int = 0
    tokens: int = 0
    capacity: int = 0
    tokens_truncated: int = 0
    documents_split: int = 0
    loss_tokens: int = 0

    @property
    def fill_ratio(self) -> float:
        """Real tokens / row capacity of the emitted rows (0.0 before any row)."""
        return self.tokens / self.capacity if self.capacity else 0.0

    @property
    def loss_ratio(self) -> float:
        """Loss tokens / real tokens of the emitted rows (0.0 before any row)."""
        return self.loss_tokens / self.tokens if self.tokens else 0.0

    def add_row(self, row_stats, seq_len: int, *, loss_tokens: int) -> None:
        """Adds one emitted row: ``row_stats`` is (tokens, pieces, documents, split
        documents, truncated tokens) of the row, ``seq_len`` its capacity in cells."""
        self.rows += 1
        self.capacity += seq_len
        self.tokens += row_stats[0]
        self.pieces += row_stats[1]
        self.documents += row_stats[2]
        self.documents_split += row_stats[3]
        self.tokens_truncated += row_stats[4]
        self.loss_tokens += loss_tokens

    def as_dict(self) -> dict[str, float]:
        """Every count and the fill ratio, e.g. for logging."""
        return {**dataclasses.asdict(self), "fill_ratio": self.fill_ratio, "loss_ratio": self.loss_ratio}
