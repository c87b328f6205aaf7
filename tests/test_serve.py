"""``gpoa serve`` without a browser: the workbench gives the predictor's masks and prompts under every
setting of the page, refuses bad uploads with a message naming the user's file, keeps every file under a
generated name in its run folder; the HTTP server queues concurrent requests, answers bad ones with a
message and goes on, and deletes its folder when it stops."""

from __future__ import annotations

import io
import json
import re
import socket
import sys
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import DEMO_CONFIG
from PIL import Image

from gpoa import GPOAPredictor
from gpoa.cli import main as gpoa_main
from gpoa.config import load_config
from gpoa.errors import InputError, UsageError
from gpoa.io import read_mask, read_prompt_file
from gpoa.metrics import dice, iou
from gpoa.serve import exposure_note
from gpoa.serve.workbench import Settings, UploadTooLarge, Workbench

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def png(array: np.ndarray, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=kind)
    return buffer.getvalue()


def workbench(tmp_path, policy=None, overrides=()) -> Workbench:
    return Workbench(load_config(DEMO_CONFIG, list(overrides)), policy, "cpu", tmp_path / "run")


def upload_pair(bench: Workbench, data, name: str, folder: str = "target"):
    image = bench.upload((data / f"{folder}_image" / name).read_bytes(), name)
    mask = bench.upload((data / f"{folder}_mask" / name).read_bytes(), f"mask of {name}")
    return image, mask


def generated_files(folder) -> list:
    """Every file under ``folder``, relative, whose name was not generated here (a hex id and a suffix)."""
    return [p for p in folder.rglob("*") if p.is_file() and not re.fullmatch(r"[0-9a-f]{16}\.\w+|[a-z]+\.(png|json)", p.name)]


def test_the_workbench_gives_the_predictors_masks_and_prompts_under_every_setting(trained_master, tmp_path):
    data, checkpoints = trained_master
    policy = checkpoints / "tiny" / "best.pt"
    overrides = ["optimize.presence_threshold=0.3"]  # presence can run with and without the policy
    bench = workbench(tmp_path, policy, overrides)
    assert bench.options()["policy_available"] and bench.options()["presence_available"] == \
        {"with_policy": True, "without_policy": True}
    names = ["reference.png", "membrane_005.png"]  # two reference pairs: k-shot
    pairs = [upload_pair(bench, data, names[0], "reference")] + [upload_pair(bench, data, names[1])]
    reference = bench.reference([p[0].id for p in pairs], [p[1].id for p in pairs])
    reference_files = ([data / "reference_image" / names[0], data / "target_image" / names[1]],
                       [data / "reference_mask" / names[0], data / "target_mask" / names[1]])
    targets = sorted((data / "target_image").iterdir())[:2]
    uploads = [upload_pair(bench, data, t.name) for t in targets]
    results = []
    for settings, count in ((Settings(True, False), 2), (Settings(False, False), 1), (Settings(True, True), 1),
                            (Settings(False, True), 1)):
        predictor = GPOAPredictor.from_config(DEMO_CONFIG, policy if settings.policy else None, device="cpu",
                                              overrides=overrides + [f"optimize.presence={settings.presence}"])
        predictor.set_reference(*reference_files)
        for target, (image, truth) in list(zip(targets, uploads))[:count]:
            expected = predictor.predict(target)
            result = bench.predict(reference, image.id, truth.id, settings)
            results.append((result, expected))
            assert np.array_equal(read_mask(result.folder / "mask.png"), expected.mask)
            assert (result.present, result.confidence, result.presence_score) == \
                (expected.present, expected.confidence, expected.presence_score)
            for kind in ("initial", "optimized"):
                written, wanted = read_prompt_file(result.folder / f"{kind}.json"), getattr(expected.prompts, kind)
                assert written.image == target.name and written.source == wanted.source
                assert written.positive_indices.tolist() == wanted.positive_indices.tolist()
                assert written.negative_indices.tolist() == wanted.negative_indices.tolist()
            truth_mask = read_mask(data / "target_mask" / target.name)
            assert (result.dice, result.iou) == (dice(expected.mask, truth_mask), iou(expected.mask, truth_mask))
    edited = [r for r, _ in results[:2] if r.initial.to_dict() != r.optimized.to_dict()]
    assert edited, "the policy edits a target: the page's optimised prompts are not the initial ones"

    archive = zipfile.ZipFile(bench.archive([r.id for r, _ in results[:2]]))
    assert sorted(archive.namelist()) == sorted(
        ["results.csv"] + [f"masks/{i}-{t.stem}.png" for i, t in enumerate(targets, 1)]
        + [f"prompts/{i}-{t.stem}.{k}.json" for i, t in enumerate(targets, 1) for k in ("initial", "optimized")])
    for i, (_, expected) in enumerate(results[:2], 1):
        mask = np.asarray(Image.open(io.BytesIO(archive.read(f"masks/{i}-{targets[i - 1].stem}.png"))))
        assert np.array_equal(mask > 0, expected.mask) and set(np.unique(mask)) <= {0, 255}
    rows = archive.read("results.csv").decode().splitlines()
    assert rows[0] == "index,image,present,confidence,presence_score,dice,iou,policy,presence"
    assert rows[1].startswith(f"1,{targets[0].name},True,") and rows[1].endswith(",True,False")
    assert generated_files(bench.folder) == []


def test_uploads_are_refused_with_a_message_that_names_the_users_file(tmp_path):
    bench = workbench(tmp_path, overrides=["serve.max_pixels=1000", "serve.max_upload_mb=0.01"])
    image = np.zeros((30, 40, 3), np.uint8)
    cases = [(b"just text", "notes.png", "notes.png: is not an image; upload a PNG, JPEG, TIFF or BMP file"),
             (png(image[:10, :10], "GIF"), "a.gif", "a.gif: is a GIF image; GPOA reads PNG, JPEG, TIFF and BMP; "
                                                     "convert it to PNG"),
             (png(image), "big.png", "big.png: is 40x30 = 0.0012 megapixels, more than this server's limit of "
                                     "0.001 megapixels (serve.max_pixels); images are refused, never downscaled; "
                                     "downscale it before uploading it, or start gpoa serve with --set "
                                     "serve.max_pixels=N")]
    for data, name, message in cases:
        with pytest.raises(InputError) as error:
            bench.upload(data, name)
        assert str(error.value) == message
    with pytest.raises(UploadTooLarge, match=r"^huge\.png: is larger than this server's upload limit of 0\.01 MB"):
        bench.upload(bytes(10_001), "huge.png")
    # a name is kept for messages; the file gets a generated one, inside the run's folder
    item = bench.upload(png(image[:20, :20]), "../../etc/\x00evil name.PNG")
    assert item.name == "evil name.PNG" and item.size == (20, 20)
    assert item.path.parent == bench.folder / "uploads" and re.fullmatch(r"[0-9a-f]{16}\.png", item.path.name)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [item.path.name]
    jpeg = bench.upload(png(image[:20, :20], "JPEG"), "photo.jpeg")
    assert jpeg.path.suffix == ".jpg"  # a JPEG mask is read as gpoa.io reads JPEG masks


def test_a_reference_that_cannot_be_used_gets_a_message_naming_the_users_file(demo_master, tmp_path):
    bench = workbench(tmp_path)
    data = demo_master / "membrane"
    image = bench.upload((data / "reference_image" / "reference.png").read_bytes(), "ref.png")
    small = bench.upload(png(np.full((20, 30), 255, np.uint8)), "small.png")
    empty = bench.upload(png(np.zeros((311, 540), np.uint8)), "the painted mask of ref.png")
    with pytest.raises(InputError, match=r"^small\.png: is 30x20 pixels but its image is 540x311; a mask must"):
        bench.reference([image.id], [small.id])
    with pytest.raises(InputError, match=r"^the painted mask of ref\.png: has no foreground pixels; the reference "
                                         "must contain the object"):
        bench.reference([image.id], [empty.id])
    with pytest.raises(UsageError, match="got 1 image.s. and 0 mask.s.: upload or paint a mask for every reference"):
        bench.reference([image.id], [])
    with pytest.raises(UsageError, match="there is no reference yet: add a reference image, then upload or paint"):
        bench.reference([], [])
    with pytest.raises(UsageError, match="no uploaded file with id '../x' on this server"):
        bench.reference(["../x"], [small.id])
    truth = bench.upload(png(np.full((20, 30), 255, np.uint8)), "truth.png")
    reference = bench.reference([image.id], [bench.upload((data / "reference_mask" / "reference.png").read_bytes(),
                                                          "mask.png").id])
    with pytest.raises(InputError, match=r"^truth\.png: is 30x20 pixels but its image is 540x311"):
        bench.predict(reference, image.id, truth.id)
    with pytest.raises(UsageError, match="this server runs without a policy; switch it off or start gpoa serve with "
                                         "--policy FILE"):
        bench.predict(reference, image.id, None, Settings(True, False))
    with pytest.raises(UsageError, match="presence is on but there is no presence threshold without a policy"):
        bench.predict(reference, image.id, None, Settings(False, True))
    with pytest.raises(UsageError, match="nothing to download yet"):
        bench.archive([])
    assert bench.options() == {"policy": False, "presence": False, "policy_available": False,
                               "presence_available": {"with_policy": False, "without_policy": False},
                               "max_pixels": 40_000_000, "max_upload_bytes": 200_000_000}


def request(url: str, data=None, headers=None, method=None):
    """(status, headers, body) of one HTTP request; an error status is returned, not raised."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers or {}, method=method), timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_the_server_queues_concurrent_requests_answers_bad_ones_and_deletes_its_folder(demo_master, tmp_path):
    from gpoa.serve import Server

    data = demo_master / "membrane"
    cfg = load_config(DEMO_CONFIG, ["serve.port=0", "serve.max_upload_mb=1"])
    with Server(cfg, None, "cpu") as server:
        url, folder = server.url, server.folder
        status, headers, page = request(url)
        assert status == 200 and b"<script src=\"/static/app.js\"" in page
        assert "default-src 'self'" in headers["Content-Security-Policy"]

        def upload(path, name=None):
            status, _, body = request(f"{url}api/uploads", path.read_bytes(),
                                      {"X-File-Name": urllib.request.quote(name or path.name)})
            assert status == 200, body
            return json.loads(body)["id"]

        reference = json.loads(request(f"{url}api/references", json.dumps(
            {"images": [upload(data / "reference_image" / "reference.png")],
             "masks": [upload(data / "reference_mask" / "reference.png")]}).encode(),
            {"Content-Type": "application/json"})[2])["reference"]
        targets = sorted((data / "target_image").iterdir())[:4]
        target_ids = [upload(t, f"ünïcode {t.name}") for t in targets]

        def predict(target_id):
            return request(f"{url}api/predictions", json.dumps({"reference": reference, "target": target_id}).encode(),
                           {"Content-Type": "application/json"})

        with ThreadPoolExecutor(4) as pool:  # four at once: one runs, the others wait their turn
            answers = list(pool.map(predict, target_ids))
        predictor = GPOAPredictor.from_config(DEMO_CONFIG, device="cpu")
        predictor.set_reference(data / "reference_image" / "reference.png", data / "reference_mask" / "reference.png")
        for target, (status, _, body) in zip(targets, answers):
            assert status == 200, body
            result = json.loads(body)
            assert result["name"] == f"ünïcode {target.name}" and result["dice"] is None
            mask = request(f"{url}{result['mask'].lstrip('/')}")[2]
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(mask))) > 0, predictor.predict(target).mask)

        status, _, body = request(f"{url}api/uploads", bytes(1_000_001), {"X-File-Name": "big.tif"})
        assert status == 413 and json.loads(body)["error"].startswith("big.tif: is larger than this server's upload "
                                                                      "limit of 1 MB (serve.max_upload_mb)")
        status, _, body = request(f"{url}api/predictions", b"{not json", {"Content-Type": "application/json"})
        assert (status, json.loads(body)) == (400, {"error": "the request body is not JSON"})
        status, _, body = request(f"{url}api/predictions", json.dumps({"reference": reference, "target": "0" * 16}).encode())
        assert status == 400 and "no uploaded file with id '0000000000000000'" in json.loads(body)["error"]
        assert request(f"{url}static/..%2F__init__.py")[0] == 404
        assert request(f"{url}api/archives/{'0' * 16}.zip")[0] == 404
        assert predict(target_ids[0])[0] == 200  # still serving
        assert folder.is_dir()
    assert not folder.exists()


def test_gpoa_serve_refuses_what_it_cannot_use_with_one_line_and_leaves_no_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))

    def refused(*argv) -> str:
        with pytest.raises(SystemExit) as stop:
            gpoa_main(["serve", *argv])
        assert stop.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and list(tmp_path.iterdir()) == []
        return lines[0]

    assert refused("--port", "70000") == \
        "gpoa serve: error: config key 'serve.port' must be in [0, 65535] (0: any free port), got 70000"
    assert "policy checkpoint" in refused("--config", str(DEMO_CONFIG), "--policy", str(tmp_path / "none.pt"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert f"cannot listen on 127.0.0.1:{port}" in refused("--config", str(DEMO_CONFIG), "--port", str(port),
                                                               "--device", "cpu")
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # the app extra is not installed
    assert "gpoa serve needs the web packages of the 'app' extra (uvicorn is missing): pip install 'gpoa[app]'" in \
        refused()


def test_only_an_address_other_machines_reach_is_announced():
    for host in ("127.0.0.1", "localhost", "::1"):
        assert exposure_note(host) is None
    assert exposure_note("0.0.0.0").startswith("gpoa serve: listening on 0.0.0.0, not only on this machine")

