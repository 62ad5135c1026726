"""What the towers are fed: feature rows of known users and of raw records, ids and histories; user vectors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.csr import CSR
from ..core.features import MINMAX, FieldSpec, FieldTable, assemble, feature_matrix
from ..core.limits import Limits
from ..core.types import NewItemData, UserAttrs
from .deadline import Check, never
from .encoder import OnnxTextEncoder
from .history import NO_HISTORY, History, known_ids, padded, with_training
from .towers import TextVectors, Tower
from .validation import check_new_texts, validate_attrs

UserRef = int | UserAttrs  # a known user's row in users.csv, or an unseen user's attributes
# Known users' mean-pooling shortcuts (mean_history.py: ~0.05 ms each) between deadline checks.
POOLED_PER_CHECK = 256


class TowerInputs:
    """Builds tower inputs from the exported tables (known users), raw attributes (unseen users, new
    items, through the text encoder when a text is new) and histories, and runs the user tower.

    Args:
        tables, text, encoder: the exported text tables, their per-field caches, the ONNX encoder.
        user_raw: numeric user attributes of the known users (the minmax fields).
        n_users: known users (rows of users.csv).
        train: split name -> its recorded training positives (a hybrid tower's known-user histories).
    """

    def __init__(
        self,
        tables: dict[str, FieldTable],
        text: dict[str, TextVectors],
        encoder: OnnxTextEncoder,
        user_raw: dict[str, np.ndarray],
        n_users: int,
        train: dict[str, CSR],
    ):
        self.tables, self.text, self.encoder = tables, text, encoder
        self.user_raw, self.n_users, self.train = user_raw, n_users, train

    def known(self, specs: list[FieldSpec], rows: np.ndarray) -> np.ndarray:
        """Tower inputs for known users ``rows``, from the exported tables and users.csv."""
        return feature_matrix(specs, self.tables, self.user_raw, rows)

    def new_texts(self, specs: list[FieldSpec], record: UserAttrs | NewItemData) -> bool:
        """Whether ``record`` holds a text the exported tables and the encoder's cache lack (its
        vectors then need an encoder run)."""
        return any(s.kind != MINMAX and self.text[s.name].new([getattr(record, s.name)]) for s in specs)

    def records(
        self,
        specs: list[FieldSpec],
        records: Sequence[UserAttrs | NewItemData],
        check: Check = never,
        limits: Limits | None = None,
    ) -> np.ndarray:
        """Input vectors for records that carry raw attributes (unseen users, new items): numbers are
        scaled, texts looked up in the exported tables or encoded (and cached).

        Args:
            check: called between the encoder's graph runs (a request's deadline).
            limits: when given, more than ``limits.max_new_texts`` distinct texts the exported
                tables lack (over every text field) are refused before any is encoded.

        Raises:
            InvalidArgument: over ``limits.max_new_texts``.
        """
        values = {s.name: [getattr(r, s.name) for r in records] for s in specs}
        if limits is not None:
            texts = [s.name for s in specs if s.kind != MINMAX]
            check_new_texts(sum(len(self.text[f].new(values[f])) for f in texts), limits)
        parts = {}
        for s in specs:
            parts[s.name] = (
                np.array(values[s.name], dtype=np.float64)
                if s.kind == MINMAX
                else self.text[s.name].get(values[s.name], self.encoder, check)
            )
        return assemble(specs, parts)

    def known_vectors(self, tower: Tower) -> np.ndarray:
        """Every known user's vector for ``tower`` (training histories only), computed once."""
        return tower.all_user_vectors(self.known, self.n_users, self.train.get(tower.split))

    def user_vector(self, tower: Tower, ref: UserRef, history: History, check: Check = never) -> np.ndarray:
        """One request's user vector [d] (Recommend): :meth:`user_vectors` without its list handling
        when a known user's history takes the mean-pooling shortcut."""
        if history.used and tower.history_input and not isinstance(ref, UserAttrs):
            self.known_vectors(tower)  # builds tower.mean_history
            if tower.mean_history is not None:
                return tower.mean_history.vector(ref, history.rows)
        return self.user_vectors(tower, [ref], [history], check)[0]

    def user_vectors(
        self,
        tower: Tower,
        refs: Sequence[UserRef],
        histories: Sequence[History] | None = None,
        check: Check = never,
        limits: Limits | None = None,
    ) -> np.ndarray:
        """Vectors [len(refs), d]: a known user without a history the tower reads takes the vector
        computed at load; a known user whose history adds items takes the mean-pooling shortcut
        (tower.mean_history) or joins the unseen users in one user-tower pass.

        ``check`` runs between encoder runs, tower blocks and shortcut users; ``limits`` bounds the
        new texts (:meth:`records`)."""
        hists = histories or [NO_HISTORY] * len(refs)
        reads = tower.history_input is not None
        run, pooled = [], []  # a tower pass; the known users' mean-pooling shortcut (mean_history.py)
        for j, (r, h) in enumerate(zip(refs, hists)):
            if isinstance(r, UserAttrs):
                run.append(j)
            elif reads and h.used:
                pooled.append(j)
        if len(run) == len(refs):  # e.g. one request's unseen user: no scatter
            return self._tower_pass(tower, refs, hists, check, limits)
        known_vecs = self.known_vectors(tower)  # builds tower.mean_history too
        if not run and not pooled:
            return known_vecs[np.asarray(refs, dtype=np.int64)]
        mean = tower.mean_history
        if mean is None:
            run, pooled = sorted(run + pooled), []
        out = known_vecs[[0 if isinstance(r, UserAttrs) else r for r in refs]]
        if run:
            out[run] = self._tower_pass(tower, [refs[j] for j in run], [hists[j] for j in run], check, limits)
        for k, j in enumerate(pooled):
            if k % POOLED_PER_CHECK == 0:
                check()
            out[j] = mean.vector(refs[j], hists[j].rows)
        return out

    def _tower_pass(
        self,
        tower: Tower,
        refs: Sequence[UserRef],
        hists: Sequence[History],
        check: Check = never,
        limits: Limits | None = None,
    ) -> np.ndarray:
        """One user-tower pass: features, ids (0 for unseen users) and histories (a known user's training
        positives joined by the request's items) for each ref."""
        new = [j for j, r in enumerate(refs) if isinstance(r, UserAttrs)]
        old = [j for j, r in enumerate(refs) if not isinstance(r, UserAttrs)]
        needs_personality = "personality" in [s.name for s in tower.user_specs]
        for j in new:
            validate_attrs(refs[j], needs_personality)
        if not old:
            features = self.records(tower.user_specs, refs, check, limits)
        elif not new:
            features = self.known(tower.user_specs, np.asarray(refs, dtype=np.int64))
        else:
            features = np.empty((len(refs), sum(s.dim for s in tower.user_specs)), dtype=np.float32)
            features[new] = self.records(tower.user_specs, [refs[j] for j in new], check, limits)
            features[old] = self.known(tower.user_specs, np.asarray([refs[j] for j in old], dtype=np.int64))
        # One request's user (Recommend) is one small run; many (Score) run in blocks between checks.
        blocks = check if len(refs) > 1 else None
        if tower.id_input is None and tower.history_input is None:
            return tower.users(features, check=blocks)
        train = self.train.get(tower.split)
        ids = np.zeros(len(refs), dtype=np.int64)  # unseen users: the unknown id
        if old:
            ids[old] = known_ids(train, [refs[j] for j in old])
        lists = [
            h.rows if isinstance(r, UserAttrs) or train is None else with_training(train.row(r), h.rows)
            for r, h in zip(refs, hists)
        ]
        return tower.users(features, ids, padded(lists), blocks)
