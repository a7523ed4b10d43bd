"""Item index: recall against exact search, kind choice, backends, exclusion, artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from index import IndexConfig, ItemIndex, build_index, exact_search
from index.base import VectorBackend
from index.build import _TUNE_MARGIN
from streamrec.errors import ArtifactError, ConfigError, DataError

K = 100


def clustered(
    n: int, dim: int, *, seed: int, clusters: int = 50, spread: float = 1.25
) -> np.ndarray:
    """L2-normalised mixture of Gaussians, shaped like two-tower embeddings."""
    rng = np.random.default_rng(1234)  # the same centres for every draw
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)]
    x = x + rng.standard_normal((n, dim)).astype(np.float32) * np.float32(spread / np.sqrt(dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def ids_for(n: int) -> list[str]:
    """Ids that are not row numbers in disguise, so a row/id mix-up shows."""
    order = np.random.default_rng(7).permutation(n)
    return [f"sku-{i:06d}" for i in order]


def set_recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Recall@k computed independently of the library: plain Python sets."""
    return float(
        np.mean(
            [
                len(set(f.tolist()) & set(e.tolist())) / len(e)
                for f, e in zip(found, exact, strict=True)
            ]
        )
    )


def assert_same_topk(
    s1: np.ndarray, r1: np.ndarray, s2: np.ndarray, r2: np.ndarray, tol: float = 1e-5
) -> None:
    """Same scores, and the same ids except among near-ties at the k boundary."""
    np.testing.assert_allclose(s1, s2, atol=tol)
    for a_s, a_r, b_r in zip(s1, r1, r2, strict=True):
        boundary = a_s[-1] + tol
        sure_a = {r for r, s in zip(a_r.tolist(), a_s.tolist(), strict=True) if s > boundary}
        assert sure_a <= set(b_r.tolist())
        assert (a_r[a_s > boundary] == b_r[a_s > boundary]).mean() > 0.9


# --- shared data and indexes (built once per module: builds dominate runtime) ----------


@pytest.fixture(scope="module")
def big() -> np.ndarray:
    return clustered(20_000, 32, seed=0)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return clustered(300, 32, seed=1)  # independent of the items and of the build sample


@pytest.fixture(scope="module")
def approx(big: np.ndarray) -> dict[str, ItemIndex]:
    ids = ids_for(len(big))
    return {
        "ivf": build_index(big, ids, IndexConfig(kind="ivf")),
        "hnsw": build_index(big[:8000], ids[:8000], IndexConfig(kind="hnsw")),
    }


@pytest.fixture(scope="module")
def small() -> np.ndarray:
    return clustered(3000, 16, seed=2, clusters=20)


@pytest.fixture(scope="module")
def flat(small: np.ndarray) -> ItemIndex:
    return build_index(small, ids_for(len(small)), IndexConfig(kind="flat", device="cpu"))


# --- recall --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_recall_at_100_against_exact_meets_target_at_defaults(approx, big, queries, kind):
    index = approx[kind]
    exact = exact_search(big[: len(index)], queries, K)[1]
    found = index.search_rows(queries, K)[1]
    assert index.info["kind"] == kind
    assert set_recall(found, exact) >= 0.95
    assert index.info["recall_at_100"] >= 0.95


def test_recorded_recall_matches_a_recomputation_on_the_held_out_half(big):
    sample = clustered(400, 32, seed=3)
    cfg = IndexConfig(kind="ivf", ivf_nprobe=4, recall_target=0.9)
    index = build_index(big, ids_for(len(big)), cfg, sample_queries=sample)
    info = index.info
    assert info["recall_queries"] == 200 and info["tune_queries"] == 200
    held_out = sample[200:]
    found = index.search_rows(held_out, K)[1]
    expected = set_recall(found, exact_search(big, held_out, K)[1])
    assert info["recall_at_100"] == pytest.approx(expected, abs=1e-4)
    assert info["params"]["nprobe"] > 4  # tuning raised it from the start value
    assert 0 < expected < 1  # approximate: a recorded 1.0 would prove nothing


def test_without_tuning_the_start_effort_is_kept_and_its_recall_recorded(big):
    cfg = IndexConfig(kind="ivf", ivf_nprobe=1, tune_search=False, recall_sample_queries=100)
    index = build_index(big, ids_for(len(big)), cfg)
    assert index.info["params"]["nprobe"] == 1
    assert index.info["tune_queries"] == 0 and index.info["recall_queries"] == 100
    assert index.info["recall_at_100"] < 0.95  # one list of 512: far from exact, and says so


# --- kind choice ---------------------------------------------------------------------


def test_auto_picks_exact_flat_up_to_the_threshold_and_approximate_above(small):
    ids = ids_for(len(small))
    cfg = IndexConfig(exact_max_items=2000, device="cpu", recall_sample_queries=20)
    assert build_index(small[:2000], ids[:2000], cfg).info["kind"] == "flat"
    assert build_index(small[:2001], ids[:2001], cfg).info["kind"] == "ivf"
    hnsw_cfg = cfg.model_copy(update={"approx_kind": "hnsw"})
    assert build_index(small[:2001], ids[:2001], hnsw_cfg).info["kind"] == "hnsw"
    assert IndexConfig().exact_max_items >= 50_000  # small catalogues are served exactly


def test_flat_is_exact(flat, small):
    assert flat.info["recall_at_100"] == 1.0
    q = clustered(20, 16, seed=4, clusters=20)
    s, r = flat.search_rows(q, 10)
    es, er = exact_search(small, q, 10)
    assert_same_topk(s, r, es, er)


# --- backends ------------------------------------------------------------------------


def test_torch_backend_returns_the_same_top_k_as_faiss_flat(small, flat):
    ids = ids_for(len(small))
    # A chunk size that does not divide n exercises the running top-k merge.
    cfg = IndexConfig(kind="torch", device="cpu", torch_chunk_items=700, recall_sample_queries=50)
    index = build_index(small, ids, cfg)
    assert index.info["backend"] == "torch-cpu" and index.info["recall_at_100"] == 1.0
    q = clustered(40, 16, seed=5, clusters=20)
    ts, tr = index.search_rows(q, 50)
    fs, fr = flat.search_rows(q, 50)
    assert_same_topk(ts, tr, fs, fr)
    # k beyond the catalogue: every row, then the same -1 / -inf padding.
    ts, tr = index.search_rows(q[:2], len(small) + 5)
    assert (tr[:, -5:] == -1).all() and np.isneginf(ts[:, -5:]).all()
    assert sorted(tr[0, :-5].tolist()) == list(range(len(small)))


def test_cuda_device_uses_the_gpu_or_says_why_not(small):
    cfg = IndexConfig(kind="auto", device="cuda", recall_sample_queries=20)
    if torch.cuda.is_available():
        index = build_index(small, ids_for(len(small)), cfg)
        assert index.info["device"].startswith("cuda") and index.info["recall_at_100"] == 1.0
    else:
        with pytest.raises(ConfigError, match="CUDA"):
            build_index(small, ids_for(len(small)), cfg)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "torch"])
def test_every_backend_honours_the_search_contract(approx, flat, small, kind):
    if kind == "torch":
        index = build_index(small, ids_for(len(small)), IndexConfig(kind="torch", device="cpu"))
    else:
        index = flat if kind == "flat" else approx[kind]
    backend = index.backend
    assert isinstance(backend, VectorBackend) and len(backend) == len(index)
    q = np.ascontiguousarray(small[:7, :1].repeat(index.dim, axis=1))  # any dim-matching input
    scores, rows = backend.search(q, 12)
    assert scores.shape == rows.shape == (7, 12)
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    assert ((rows >= 0) & (rows < len(index))).all()
    assert len(set(rows[0].tolist())) == 12  # no row twice
    q_copy = q.copy()
    index.search(q, 5)
    np.testing.assert_array_equal(q, q_copy)  # the caller's array is not modified


def test_small_batches_give_the_batch_answer_and_leave_the_thread_count_alone(flat, small):
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(3)  # a value no search would leave behind by accident
    try:
        q = clustered(40, 16, seed=13, clusters=20)
        one_by_one = np.vstack([flat.search_rows(q[i : i + 1], 10)[1] for i in range(len(q))])
        np.testing.assert_array_equal(one_by_one, flat.search_rows(q, 10)[1])
        assert faiss.omp_get_max_threads() == 3
    finally:
        faiss.omp_set_num_threads(before)


# --- ids and exclusion ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_ids_map_back_to_the_planted_item(approx, flat, small, big, kind):
    index = flat if kind == "flat" else approx[kind]
    data = small if kind == "flat" else big
    rows = np.random.default_rng(8).choice(len(index), 25, replace=False)
    hits = index.search(data[rows], 3)
    for row, hit in zip(rows, hits, strict=True):
        assert hit[0][0] == index.item_ids[row] == ids_for(len(data))[row]
        # IVF lists hold fp16 vectors by default: scores carry fp16 rounding (~1e-4).
        assert hit[0][1] == pytest.approx(1.0, abs=1e-3 if kind == "ivf" else 1e-5)


def test_exclusion_removes_the_ids_and_still_returns_k_exact_answers(flat, small):
    q = clustered(10, 16, seed=6, clusters=20)
    top = flat.search(q, 30)
    exclude = [{item for item, _ in hits[:30:2]} | {"not-in-catalogue"} for hits in top]
    got = flat.search(q, 20, exclude=exclude)
    ids = flat.item_ids
    _es, er = exact_search(small, q, 20 + 30)
    for hits, ex, erow in zip(got, exclude, er, strict=True):
        assert len(hits) == 20
        assert not {item for item, _ in hits} & ex
        expected = [ids[r] for r in erow if ids[r] not in ex][:20]
        assert [item for item, _ in hits] == expected


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_exclusion_of_nearly_everything_widens_to_an_exhaustive_search(kind):
    data = clustered(2000, 16, seed=9, clusters=20)
    ids = ids_for(len(data))
    cfg = IndexConfig(
        kind=kind,
        ivf_nprobe=1,
        ivf_storage="flat",  # exact scores: the order below is compared with exact search
        hnsw_ef_search=16,
        tune_search=False,
        recall_sample_queries=20,
    )
    index = build_index(data, ids, cfg)
    q = clustered(3, 16, seed=10, clusters=20)
    allowed = set(np.random.default_rng(11).choice(ids, 60, replace=False).tolist())
    exclude = [set(ids) - allowed] * len(q)
    got = index.search(q, 50, exclude=exclude)
    for hits, row in zip(got, exact_search(data, q, len(data))[1], strict=True):
        expected = [ids[r] for r in row if ids[r] in allowed][:50]
        assert [item for item, _ in hits] == expected  # all 50, in exact order
    # Asking for more than the catalogue allows returns all that is allowed, no padding ids.
    assert [len(h) for h in index.search(q, 80, exclude=exclude)] == [60, 60, 60]


# --- artifacts -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "torch"])
def test_save_and_load_give_identical_results(tmp_path, approx, flat, small, big, queries, kind):
    if kind == "torch":
        index = build_index(small, ids_for(len(small)), IndexConfig(kind="torch", device="cpu"))
    else:
        index = flat if kind == "flat" else approx[kind]
    q = queries if index.dim == queries.shape[1] else clustered(30, 16, seed=12, clusters=20)
    index.save(tmp_path / "ix")
    loaded = ItemIndex.load(tmp_path / "ix", device="cpu")
    assert loaded.info == index.info  # includes the tuned nprobe / efSearch
    assert loaded.item_ids == index.item_ids
    before, after = index.search_rows(q, K), loaded.search_rows(q, K)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])


def test_a_mapped_ivf_index_searches_alike_and_is_read_only(tmp_path, approx, queries):
    """mmap=True (serving): the lists stay in the file, shared by every process."""
    import faiss

    index = approx["ivf"]
    index.save(tmp_path / "ix")
    mapped = ItemIndex.load(tmp_path / "ix", device="cpu", mmap=True)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(mapped.backend._index).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)  # really mapped, not copied
    before, after = index.search_rows(queries, K), mapped.search_rows(queries, K)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    with pytest.raises(ArtifactError, match="read-only"):
        mapped.save(tmp_path / "again")


@pytest.fixture
def saved(tmp_path, flat) -> Path:
    flat.save(tmp_path / "ix")
    return tmp_path / "ix"


def _rewrite_with_checksum(directory: Path, name: str, data: bytes) -> None:
    """Change a file *and* its recorded checksum: only the consistency checks can catch it."""
    import hashlib

    (directory / name).write_bytes(data)
    meta = json.loads((directory / "index.json").read_text())
    meta["files"][name] = hashlib.sha256(data).hexdigest()
    (directory / "index.json").write_text(json.dumps(meta))


def test_missing_directory_or_file_is_an_artifact_error(tmp_path, saved):
    with pytest.raises(ArtifactError, match="Unable to find"):
        ItemIndex.load(tmp_path / "nowhere")
    (saved / "index.faiss").unlink()
    with pytest.raises(ArtifactError, match=r"index\.faiss"):
        ItemIndex.load(saved)


def test_a_corrupted_index_file_fails_its_checksum(saved):
    raw = bytearray((saved / "index.faiss").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (saved / "index.faiss").write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="checksum"):
        ItemIndex.load(saved)


def test_a_truncated_index_file_is_an_artifact_error_even_with_a_matching_checksum(saved):
    _rewrite_with_checksum(saved, "index.faiss", (saved / "index.faiss").read_bytes()[:100])
    with pytest.raises(ArtifactError, match="faiss index"):
        ItemIndex.load(saved)


def test_id_count_that_disagrees_with_the_vectors_is_an_artifact_error(saved, flat):
    ids = list(flat.item_ids)[:-1]
    _rewrite_with_checksum(saved, "items.json", json.dumps(ids).encode())
    with pytest.raises(ArtifactError, match="must agree"):
        ItemIndex.load(saved)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m["info"].update(dim=17), "dimension"),
        (lambda m: m.update(format_version=99), "format"),
        (lambda m: m["info"].update(kind="hnsw"), "kind"),
        (lambda m: m.update(family="pickle"), "family"),
    ],
)
def test_inconsistent_index_json_is_an_artifact_error(saved, edit, match):
    meta = json.loads((saved / "index.json").read_text())
    edit(meta)
    (saved / "index.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=match):
        ItemIndex.load(saved)


def test_unreadable_index_json_is_an_artifact_error(saved):
    (saved / "index.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="JSON"):
        ItemIndex.load(saved)


# --- input validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vectors", "ids", "match"),
    [
        (np.ones(8, dtype=np.float32), ["a"] * 8, "2-D"),
        (np.zeros((0, 4), dtype=np.float32), [], "non-empty"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), ["a", "b"], "NaN"),
        (np.array([["x", "y"]]), ["a"], "numeric"),
        (np.eye(3), ["a", "b"], "2 item ids for 3"),
        (np.eye(3), ["a", "b", "a"], "'a' appears more than once"),
        (np.eye(2), ["a", 7], "strings"),
        (np.eye(2), "ab", "not one string"),
    ],
)
def test_bad_input_is_a_data_error_naming_the_problem(vectors, ids, match):
    with pytest.raises(DataError, match=match):
        build_index(vectors, ids, IndexConfig(kind="flat"))


def test_bad_queries_are_data_errors(flat):
    with pytest.raises(DataError, match="dimension 8"):
        flat.search(np.ones((1, 8)), 5)
    with pytest.raises(DataError, match="2-D"):
        flat.search(np.ones(16), 5)
    with pytest.raises(DataError, match="NaN"):
        flat.search(np.full((1, 16), np.inf), 5)
    with pytest.raises(DataError, match="positive integer"):
        flat.search(np.ones((1, 16)), 0)
    with pytest.raises(DataError, match="2 exclusion sets for 1"):
        flat.search(np.ones((1, 16)), 5, exclude=[{"x"}, {"y"}])


def test_config_rejects_typos_and_is_frozen():
    with pytest.raises(ValidationError):
        IndexConfig(nprobe=8)  # type: ignore[call-arg]
    cfg = IndexConfig()
    with pytest.raises(ValidationError):
        cfg.kind = "flat"  # type: ignore[misc]
    with pytest.raises(ConfigError, match="HNSW"):
        from index.faiss_backend import FaissBackend

        FaissBackend.build(np.eye(4, dtype=np.float32), "hnsw", cfg, use_gpu=True)


def test_tuning_stops_near_the_smallest_effort_that_meets_the_target(big):
    # Recall only rises with nprobe (more lists, a superset of candidates), so an effort
    # a bisection step below the tuned one must miss the target (plus the bisection's
    # margin) on the tuning queries.
    sample = clustered(400, 32, seed=3)
    cfg = IndexConfig(kind="ivf", ivf_nprobe=2, recall_target=0.9)
    index = build_index(big, ids_for(len(big)), cfg, sample_queries=sample)
    tuned = index.info["params"]["nprobe"]
    tune_queries = sample[:200]
    exact = exact_search(big, tune_queries, K)[1]

    def recall_at(nprobe: int) -> float:
        index.backend.effort = nprobe  # type: ignore[attr-defined]
        return set_recall(index.search_rows(tune_queries, K)[1], exact)

    assert recall_at(tuned) >= 0.9 + _TUNE_MARGIN
    assert recall_at(tuned - max(2, tuned // 20)) < 0.9 + _TUNE_MARGIN
    assert index.info["recall_at_100"] >= 0.9  # and the held-out half meets the target
