"""The generated bad-input corpus through training-data loading, ``build_index.py`` (--images and
--add) and the app's search handlers: every valid file processed, every other one refused or
skipped with its reason, never a crash. (The running app's HTTP path is in
test_reliability_app.py; the figures for all paths come from scripts/measure_reliability.py.)"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from reliability import inputs
from reliability.corpus import KIND_OF, KINDS, write_corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_ordinary=12)


def _all_handled(outcomes: list[inputs.Outcome]) -> None:
    bad = [o for o in outcomes if not o.handled]
    assert bad == [], bad
    assert len(outcomes) == len(KINDS)


def test_corpus_covers_the_issue_list(corpus):
    names = {k.name for k in KINDS}
    for must in ("zero-byte", "truncated jpeg", "text named .jpg", "html upload", "svg upload",
                 "png bomb 50000x50000", "16-bit png", "cmyk jpeg", "palette png with transparency",
                 "animated gif", "exif-rotated jpeg", "1x1 image", "very large valid jpeg (6000x4000)"):
        assert must in names
    assert (corpus.root / corpus.kinds["png bomb 50000x50000"]).stat().st_size < 1000  # a header, not pixels
    assert len(corpus.expected_valid()) == 12 + sum(k.valid for k in KINDS)


def test_training_data_loading_keeps_the_valid_and_lists_the_rest(corpus):
    got = inputs.training_decode_checks(corpus)
    assert got["paths"] == corpus.expected_valid()
    assert sorted(got["skipped"]) == corpus.expected_skipped()
    for rel, why in got["skipped"].items():
        kind = next(n for n, r in corpus.kinds.items() if r == rel)
        assert re.search(KIND_OF[kind].reason, why), (kind, why)
    assert got["exif_upright"]


def test_handlers_answer_every_kind(shapes_index: Path, corpus):
    from index.search import SearchIndex
    from instdisc.web.handlers import SearchHandlers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # gr.Warning outside a request
        with SearchIndex.open(shapes_index, device="cpu") as idx:
            outcomes, facts = inputs.through_handlers(SearchHandlers(idx), corpus)
    _all_handled(outcomes)
    assert facts["exif_upright"]
    assert {o.result for o in outcomes} == {"processed", "refused"}


def test_build_index_script_ingests_and_adds_the_corpus(tiny_run: Path, corpus, tmp_path: Path):
    outcomes, facts = inputs.through_ingest(corpus, tiny_run / "checkpoint.pt", tmp_path / "index")
    _all_handled(outcomes)
    assert facts["count"] == len(corpus.expected_valid()) and facts["paths_match"]
    assert facts["exif"]["reference_is_upright"]  # the hand-rotated reference: yellow on top
    assert facts["exif"]["upright_finds_it"]  # the indexed vector is the upright image's, not the stored one's
    assert facts["exif"]["stored_pixels_score"] is None or facts["exif"]["stored_pixels_score"] < 0.999

    outcomes, facts = inputs.through_add(corpus, tiny_run / "checkpoint.pt", tmp_path / "index-add")
    _all_handled(outcomes)
    assert facts["added"] == facts["expected_added"] and facts["skipped"] == facts["expected_skipped"]
    assert f"unreadable {len(corpus.expected_skipped())}" in facts["stdout"]


def test_a_thin_strip_is_decoded_in_bounded_memory(tmp_path: Path):
    """1 x 1,000,000 pixels (4 kB) used to be resized to 32 x 32,000,000 before cropping (about 3 GB)."""
    from reliability.corpus import thin_strip_png

    f = tmp_path / "strip.png"
    f.write_bytes(thin_strip_png())
    code = ("import resource, sys; from instdisc.images import load_image, fit_square; "
            "img = load_image(sys.argv[1]); before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "a = fit_square(img, 32); assert a.shape == (32, 32, 3), a.shape; "
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)")
    r = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) < 100  # MiB of extra peak memory for the resize
