"""Run the bad-input corpus through every way a file enters the product and judge each outcome.

Paths:

* ``training``: ``scripts/train.py`` on the corpus folder (decode, skip report, a real epoch);
* ``ingest``: ``scripts/build_index.py --images`` on the same folder (embed, skip report in the manifest);
* ``add``: ``scripts/build_index.py --add`` of the awkward files into an index of the ordinary ones;
* ``app``: the search handlers (``SearchHandlers.api_search`` and the UI event ``ui_search``);
* ``app-http``: the running app's HTTP API (upload + ``/search``), as any API user sends it.

An outcome is *handled* when a valid file was processed and an invalid one was refused or
skipped with a message matching the kind's reason (or, in a folder, never looked at because
its name is not an image's). Anything else -- a crash, a missing file, a wrong message --
is not handled and the report says why.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from instdisc.images import hwc

from .corpus import KIND_OF, KINDS, Corpus, exif_upright

ROOT = Path(__file__).resolve().parents[1]
SCRIPT_TIMEOUT = 900  # seconds; the large JPEG and a busy machine make a run slow, never this slow


@dataclass
class Outcome:
    kind: str
    path: str  # training | ingest | add | app | app-http
    result: str  # processed | refused | skipped | ignored | crash | wrong
    handled: bool
    detail: str = ""


def judge(kind: str, path: str, processed: bool, message: str | None, ignored: bool = False) -> Outcome:
    """The outcome of one file on one path: ``processed``, or refused/skipped with ``message``."""
    k = KIND_OF[kind]
    if ignored:
        return Outcome(kind, path, "ignored", not k.image_name, "not an image file name: never read")
    if processed:
        return Outcome(kind, path, "processed", k.valid, "" if k.valid else "an invalid file was accepted")
    if message is None:
        return Outcome(kind, path, "wrong", False, "neither processed nor reported")
    result = "skipped" if path in ("training", "ingest", "add") else "refused"
    ok = not k.valid and bool(re.search(k.reason, message))
    return Outcome(kind, path, result, ok, message[:300])


def run_script(args: list[str], env: dict | None = None,
               timeout: float = SCRIPT_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=env)


def _from_skip_list(corpus: Corpus, path: str, kept: list[str], skipped: dict[str, str]) -> list[Outcome]:
    out = []
    for name, rel in corpus.kinds.items():
        out.append(judge(name, path, rel in kept, skipped.get(rel), ignored=not KIND_OF[name].image_name))
    return out


# ---------------------------------------------------------------- training


def through_training(corpus: Corpus, run_dir: Path, epochs: int = 1,
                     batch_size: int = 16) -> tuple[list[Outcome], dict]:
    """``scripts/train.py --preset tiny`` on the corpus; the checkpoint's file list says what was trained on."""
    from instdisc.checkpoint import load

    r = run_script(["scripts/train.py", "--data", str(corpus.root), "--out", str(run_dir), "--preset", "tiny",
                    "--epochs", str(epochs), "--batch-size", str(batch_size), "--precision", "fp32",
                    "--no-progress"])
    facts = {"returncode": r.returncode, "stderr_tail": r.stderr[-2000:]}
    if r.returncode != 0:
        return [Outcome(k.name, "training", "crash", False, r.stderr[-300:]) for k in KINDS], facts
    kept = list(load(run_dir / "checkpoint.pt")["dataset"]["paths"])
    # the skip report is the warning listing "  PATH: reason" lines
    skipped = dict(re.findall(r"^\s+(\S+): (.+)$", r.stderr, flags=re.M))
    skipped = {p: why for p, why in skipped.items() if p in corpus.kinds.values()}
    facts.update(trained_on=len(kept), expected=len(corpus.expected_valid()), paths_match=kept ==
                 corpus.expected_valid())
    return _from_skip_list(corpus, "training", kept, skipped), facts


def training_decode_checks(corpus: Corpus, image_size: int = 32) -> dict:
    """``load_folder`` in-process: the kept list, the skip list, and the EXIF image decoded upright."""
    from instdisc.data import load_folder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        coll = load_folder(corpus.root, image_size, use_cache=False, progress=False)
    i = coll.paths.index(corpus.kinds["exif-rotated jpeg"])
    return {"paths": coll.paths, "skipped": dict(coll.skipped),
            "exif_upright": exif_upright(hwc(coll.images[i]))}


# ---------------------------------------------------------------- index building


def through_ingest(corpus: Corpus, checkpoint: Path, out: Path) -> tuple[list[Outcome], dict]:
    """``scripts/build_index.py --images CORPUS``: the index holds the valid files, the manifest lists the rest."""
    r = run_script(["scripts/build_index.py", "--checkpoint", str(checkpoint), "--out", str(out), "--images",
                    str(corpus.root), "--index-type", "flat", "--no-progress"])
    facts = {"returncode": r.returncode, "stderr_tail": r.stderr[-2000:]}
    if r.returncode != 0:
        return [Outcome(k.name, "ingest", "crash", False, r.stderr[-300:]) for k in KINDS], facts
    from index.search import SearchIndex

    m = json.loads((out / "manifest.json").read_text())
    with SearchIndex.open(out, device="cpu") as idx:
        kept = sorted(idx.paths())
        facts.update(count=len(idx), expected=len(corpus.expected_valid()),
                     paths_match=kept == corpus.expected_valid(), exif=_exif_vector_check(idx, corpus))
    return _from_skip_list(corpus, "ingest", kept, {p: why for p, why in m["skipped"]}), facts


def _exif_vector_check(idx, corpus: Corpus) -> dict:
    """The indexed vector of the EXIF-rotated JPEG is that of its upright pixels, not of the stored ones.

    The upright reference is made here, independently of the product's loader: the stored pixels
    rotated by hand as orientation 6 says (90 degrees clockwise), so a loader that ignored EXIF
    would index the stored pixels and fail this check."""
    f = corpus.root / corpus.kinds["exif-rotated jpeg"]
    with Image.open(f) as im:
        assert im.getexif().get(0x0112) == 6, "the corpus file lost its orientation tag"
        stored = im.convert("RGB")  # no EXIF transpose
    upright = stored.transpose(Image.Transpose.ROTATE_270)  # PIL rotates counter-clockwise: 270 = 90 clockwise
    hits = idx.search_images([upright, stored], 1)
    up, st = hits[0][0], hits[1][0]
    rel = corpus.kinds["exif-rotated jpeg"]
    return {"reference_is_upright": exif_upright(np.asarray(upright)),
            "upright_finds_it": up.path == rel and up.score > 0.999, "upright_score": round(up.score, 5),
            "stored_pixels_score": round(st.score, 5) if st.path == rel else None}


def through_add(corpus: Corpus, checkpoint: Path, out: Path) -> tuple[list[Outcome], dict]:
    """An index of the ordinary images, then ``--add odd/``: valid kinds added, the rest listed as unreadable
    in the manifest's update record (paths relative to the index root, which moves up to the corpus)."""
    base = run_script(["scripts/build_index.py", "--checkpoint", str(checkpoint), "--out", str(out), "--images",
                       str(corpus.root / "a"), "--index-type", "flat", "--no-progress"])
    r = run_script(["scripts/build_index.py", "--out", str(out), "--add", str(corpus.root / "odd"),
                    "--no-progress"]) if base.returncode == 0 else base
    facts = {"returncode": r.returncode, "stdout": r.stdout[-500:], "stderr_tail": r.stderr[-2000:]}
    if r.returncode != 0:
        return [Outcome(k.name, "add", "crash", False, r.stderr[-300:]) for k in KINDS], facts
    m = json.loads((out / "manifest.json").read_text())
    last = m["updates"][-1]
    n_valid = sum(KIND_OF[name].valid for name in corpus.kinds)
    n_skip = len(corpus.expected_skipped())
    facts.update(added=last["added"], skipped=last["skipped"], expected_added=n_valid, expected_skipped=n_skip)
    from index.search import SearchIndex

    with SearchIndex.open(out, device="cpu") as idx:
        kept = idx.paths()  # the root moved up to the corpus: a/... and odd/...
    return _from_skip_list(corpus, "add", kept, dict(last["unreadable"])), facts


# ---------------------------------------------------------------- the app


def through_handlers(handlers, corpus: Corpus, k: int = 5) -> tuple[list[Outcome], dict]:
    """Each file as an upload to the search handlers: the API call and the UI event."""
    from instdisc.web.handlers import ANY, QueryError

    out, facts = [], {}
    for name, rel in corpus.kinds.items():
        f = corpus.root / rel
        payload = {"path": str(f), "orig_name": f.name, "meta": {"_type": "gradio.FileData"}}
        try:
            res = handlers.api_search(payload, k)
            ok = len(res["ids"]) == k
            gallery, status, _ = handlers.ui_search(payload, k, ANY, ANY)
            ok = ok and len(gallery) == k
            out.append(judge(name, "app", ok, None if ok else f"partial answer: {status}"))
        except QueryError as e:
            gallery, status, state = handlers.ui_search(payload, k, ANY, ANY)
            ui_ok = gallery == [] and state is None and "Could not search" in status
            o = judge(name, "app", False, str(e))
            if not ui_ok:
                o.handled, o.detail = False, f"UI event did not report it: {status}"
            out.append(o)
        except Exception as e:  # noqa: BLE001 -- a crash is what this looks for
            out.append(Outcome(name, "app", "crash", False, f"{type(e).__name__}: {e}"[:300]))
    img, _ = handlers.decode_query(str(corpus.root / corpus.kinds["exif-rotated jpeg"]))
    facts["exif_upright"] = img.size == (20, 40) and exif_upright(np.asarray(img))
    return out, facts


def through_http(url: str, corpus: Corpus, k: int = 5) -> tuple[list[Outcome], dict]:
    """Each file uploaded to the running app's ``/search`` API; the app must answer every one."""
    from .load import ApiError, SearchClient

    client = SearchClient(url)
    out = []
    try:
        for name, rel in corpus.kinds.items():
            f = corpus.root / rel
            try:
                res = client.search(f.name, f.read_bytes(), k)
                out.append(judge(name, "app-http", len(res.get("ids", [])) == k, None))
            except ApiError as e:
                out.append(judge(name, "app-http", False, str(e)))
            except Exception as e:  # noqa: BLE001
                out.append(Outcome(name, "app-http", "crash", False, f"{type(e).__name__}: {e}"[:300]))
        alive = client.search("check.png", (corpus.root / corpus.ordinary[0]).read_bytes(), 1)
    finally:
        client.close()
    return out, {"still_serving": bool(alive.get("ids"))}


def summarise(outcomes: list[Outcome]) -> dict:
    """Per path: kinds tried and handled, and the unhandled ones."""
    paths: dict[str, dict] = {}
    for o in outcomes:
        p = paths.setdefault(o.path, {"tried": 0, "handled": 0, "processed": 0, "refused_or_skipped": 0,
                                      "ignored": 0, "not_handled": []})
        p["tried"] += 1
        p["handled"] += o.handled
        p["processed"] += o.result == "processed"
        p["refused_or_skipped"] += o.result in ("refused", "skipped")
        p["ignored"] += o.result == "ignored"
        if not o.handled:
            p["not_handled"].append(asdict(o))
    return paths
