"""Model artifacts: round trip, tamper detection, pickle refusal, atomic writes, immutable versions, S3.

The S3 tests run against a real S3-compatible server on loopback (moto's ThreadedMotoServer),
through pyarrow's own S3 client: nothing on the client side is mocked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
import torch

from camenn.checkpoint import (
    MODEL_CODE,
    ArtifactError,
    PickleRefusedError,
    check_artifact,
    code_fingerprint,
    copy_artifact,
    list_versions,
    load_artifact,
    resolve_artifact,
    save_artifact,
    write_artifact,
)
from camenn.model import CameNNBatch, CameNNConfig, ItemTokens, create_model

TINY = dict(text_dim=12, image_dim=10, n_patches=4, max_text_tokens=6, d_model=16, n_heads=2, ffn_mult=2,
            n_experts=3, top_k=2, max_behaviour=4, item_feature_sizes={"category": 7, "price_bucket": 4},
            user_feature_sizes={"age_band": 5})
METADATA = {"featurizer": {"fingerprint": "abc123", "max_text_tokens": 6}, "vocab": {"category": ["?", "shoes"]},
            "training": {"epochs": 2, "val_auc": {"cvr": 0.71}}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def trained_like_model(frame: str = "camenn"):
    """A model whose every weight is random (heads and gates too), as after training."""
    model = create_model(frame, **TINY)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def random_batch(cfg: CameNNConfig, B: int = 3, N: int = 2, L: int = 4) -> CameNNBatch:
    gen = torch.Generator().manual_seed(1)

    def items(*lead):
        return ItemTokens(torch.randn(*lead, L, cfg.text_dim, generator=gen), torch.rand(*lead, L, generator=gen) < 0.8,
                          torch.randn(*lead, cfg.n_patches, cfg.image_dim, generator=gen),
                          torch.stack([torch.randint(0, n, lead, generator=gen) for n in cfg.item_feature_sizes.values()], -1))

    users = torch.stack([torch.randint(0, n, (B,), generator=gen) for n in cfg.user_feature_sizes.values()], -1)
    return CameNNBatch(items(B), items(B, N), torch.rand(B, N, generator=gen) < 0.7, users)


@pytest.fixture
def saved(tmp_path):
    model = trained_like_model()
    path = Path(save_artifact(tmp_path / "model", model, METADATA))
    return model, path


def rewrite_manifest_entry(path, name):
    """Make the manifest agree with the file as it is now (a tamperer who also edits the manifest)."""
    import hashlib

    manifest = json.loads((path / "manifest.json").read_text())
    data = (path / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("frame", ["camenn", "mose"])
def test_round_trip_gives_identical_outputs(tmp_path, frame):
    model = trained_like_model(frame)
    path = save_artifact(tmp_path / "model", model, METADATA)
    assert sorted(os.listdir(tmp_path / "model")) == ["LATEST", "versions"]
    assert sorted(os.listdir(path)) == ["config.json", "manifest.json", "model.safetensors"]
    art = load_artifact(path)
    assert not art.model.training
    assert art.config == model.cfg and art.metadata == METADATA
    assert len(art.version) == 12 and all(c in "0123456789abcdef" for c in art.version)
    batch = random_batch(model.cfg)
    a, b = model(batch), art.model(batch)
    for t in model.cfg.tasks:
        assert torch.equal(a[t], b[t])
        assert torch.equal(a["gates"][t], b["gates"][t])
    only_items = CameNNBatch(batch.target)
    assert torch.equal(model(only_items)["ita"], art.model(only_items)["ita"])


def test_config_json_round_trips_the_config(saved):
    model, path = saved
    config = json.loads((path / "config.json").read_text())
    assert config["format_version"] == 1
    assert CameNNConfig.from_dict(config["model"]) == model.cfg
    assert config["featurizer"] == METADATA["featurizer"] and config["vocab"] == METADATA["vocab"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"config.json", "model.safetensors"}
    assert manifest["files"]["model.safetensors"]["size"] == (path / "model.safetensors").stat().st_size


def test_version_changes_with_the_weights(tmp_path):
    a = save_artifact(tmp_path / "a", trained_like_model(), METADATA)
    model = trained_like_model()
    with torch.no_grad():
        model.heads["cvr"].bias.add_(1.0)
    b = save_artifact(tmp_path / "b", model, METADATA)
    assert load_artifact(a).version != load_artifact(b).version
    assert load_artifact(a).version == load_artifact(a).version


def test_flipped_byte_in_weights_is_caught(saved):
    _, path = saved
    data = bytearray((path / "model.safetensors").read_bytes())
    data[len(data) - 5] ^= 0x01  # inside the tensor data, not the header
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.safetensors does not match manifest\.json"):
        load_artifact(path)


def test_edited_config_is_caught(saved):
    _, path = saved
    config = json.loads((path / "config.json").read_text())
    config["model"]["dropout"] = 0.5
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match=r"config\.json does not match"):
        load_artifact(path)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "manifest.json"])
def test_missing_file_fails_clearly(saved, name):
    _, path = saved
    (path / name).unlink()
    with pytest.raises(ArtifactError, match=name.replace(".", r"\.") + ".*missing"):
        load_artifact(path)


def test_unlisted_extra_file_is_refused(saved):
    _, path = saved
    (path / "notes.txt").write_text("hello")
    with pytest.raises(ArtifactError, match=r"notes\.txt.*not listed"):
        load_artifact(path)


@pytest.mark.parametrize("update_manifest", [False, True])
def test_pickle_in_place_of_safetensors_is_refused(saved, update_manifest):
    model, path = saved
    torch.save(model.state_dict(), path / "model.safetensors")
    if update_manifest:  # hashes alone cannot stop this: the manifest was forged too
        rewrite_manifest_entry(path, "model.safetensors")
    with pytest.raises(PickleRefusedError, match="pickles are refused"):
        load_artifact(path)


def test_any_pickle_file_in_the_directory_is_refused(saved):
    model, path = saved
    torch.save(model.state_dict(), path / "extra.pt")
    with pytest.raises(PickleRefusedError, match=r"extra\.pt.*pickles are refused"):
        load_artifact(path)


def test_wrong_weights_fail_strict_load(tmp_path):
    """A manifest-consistent artifact whose weights belong to another config is not half-loaded."""
    # plain folders: in a version, the rewritten manifest would no longer hash to the version's name
    small = Path(write_artifact(tmp_path / "small", trained_like_model(), METADATA))
    other = Path(write_artifact(tmp_path / "other", create_model("single_task", **{**TINY, "top_k": None}), METADATA))
    (small / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    rewrite_manifest_entry(small, "model.safetensors")
    with pytest.raises(ArtifactError, match="does not fit the model(.|\n)*Missing key"):
        load_artifact(small)


def test_write_is_atomic_and_refuses_to_clobber(tmp_path):
    model = trained_like_model()
    target = tmp_path / "model"
    with pytest.raises(TypeError):  # metadata that is not JSON-safe fails before anything lands
        write_artifact(target, model, {"when": object()})
    with pytest.raises(TypeError):
        save_artifact(target, model, {"when": object()})
    assert os.listdir(tmp_path) == []  # no artifact, no temp directory left behind
    with pytest.raises(ValueError, match="reserved"):
        save_artifact(target, model, {"model": {}})
    write_artifact(target, model, METADATA)
    with pytest.raises(FileExistsError):
        write_artifact(target, model, METADATA)
    with torch.no_grad():
        model.heads["cvr"].bias.add_(1.0)
    write_artifact(target, model, {"run": 2}, overwrite=True)
    assert os.listdir(tmp_path) == ["model"]
    art = load_artifact(target)
    assert art.metadata == {"run": 2}
    assert torch.equal(art.model.heads["cvr"].bias, model.heads["cvr"].bias)


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_two_trainings_are_two_versions_and_the_first_is_untouched(tmp_path):
    root = tmp_path / "model"
    first_model, second_model = trained_like_model(), trained_like_model()
    with torch.no_grad():
        second_model.heads["cvr"].bias.add_(1.0)
    first = Path(save_artifact(root, first_model, {"run": 1}))
    before = _files(first)
    second = Path(save_artifact(root, second_model, {"run": 2}))

    assert first != second and first.parent == second.parent == root / "versions"
    assert list_versions(root) == [str(first), str(second)]   # oldest first: a name starts with its save time
    assert _files(first) == before   # not a byte, not a timestamp changed
    assert (root / "LATEST").read_text().strip() == second.name
    assert resolve_artifact(root) == str(second)
    latest, old = load_artifact(root), load_artifact(first)
    assert latest.metadata == {"run": 2} and latest.path == str(second)
    assert old.metadata == {"run": 1} and old.version != latest.version
    assert torch.equal(old.model.heads["cvr"].bias, first_model.heads["cvr"].bias)
    # the name is the manifest's hash: the folder says which bytes it holds
    assert second.name.endswith(hashlib.sha256((second / "manifest.json").read_bytes()).hexdigest()[:12])


def test_a_manifest_rewritten_in_a_version_no_longer_matches_its_name(saved):
    """Rewriting the manifest to vouch for other bytes passes every file check; the version's name still tells."""
    _, path = saved
    config = json.loads((path / "config.json").read_text())
    config["metrics"] = {"cvr_auc": 0.99}
    (path / "config.json").write_text(json.dumps(config))
    rewrite_manifest_entry(path, "config.json")
    with pytest.raises(ArtifactError, match=r"manifest\.json does not hash to the version's name"):
        load_artifact(path)


def test_a_root_without_its_pointer_says_which_versions_to_pick(saved):
    _, path = saved
    root = path.parent.parent
    (root / "LATEST").write_text("../../etc\n")
    with pytest.raises(ArtifactError, match="LATEST names '../../etc', which is not a version name"):
        load_artifact(root)
    (root / "LATEST").unlink()
    with pytest.raises(ArtifactError, match="holds versions/ but no LATEST pointer; point the config at one of its"):
        load_artifact(root)
    assert load_artifact(path).metadata == METADATA   # the version itself still loads


def test_copy_publishes_the_very_bytes_as_a_new_version(tmp_path):
    shipped = Path(write_artifact(tmp_path / "shipped", trained_like_model(), METADATA))
    root = tmp_path / "artifacts"
    save_artifact(root, trained_like_model("mose"), {"run": 1})
    copy = Path(copy_artifact(shipped, root))
    assert len(list_versions(root)) == 2 and resolve_artifact(root) == str(copy)
    assert {n: b for n, (b, _) in _files(copy).items()} == {n: b for n, (b, _) in _files(shipped).items()}
    with pytest.raises(ArtifactError, match="does not match"):   # a broken source is not published
        (shipped / "config.json").write_text("{}")
        copy_artifact(shipped, root)
    assert len(list_versions(root)) == 2


def copy_of_the_model_code(tmp_path: Path, edit=None) -> Path:
    """The MODEL_CODE modules copied to a folder of their own, model.py passed through ``edit``."""
    package = Path(__file__).resolve().parent.parent / "camenn"
    folder = tmp_path / f"code-{len(list(tmp_path.glob('code-*')))}"
    folder.mkdir()
    for name in MODEL_CODE:
        text = (package / name).read_text(encoding="utf-8")
        (folder / name).write_text(edit(text) if edit and name == "model.py" else text, encoding="utf-8")
    return folder


def test_the_code_fingerprint_follows_what_the_code_does_not_its_docstrings(tmp_path):
    current = code_fingerprint()
    assert code_fingerprint(copy_of_the_model_code(tmp_path)) == current

    def reword(text: str) -> str:   # the module's docstring, a function's, a comment, a blank line
        edits = [("One readable file", "A single readable file"),
                 ("\nTASKS = ", "\n# the heads a model may have\n\nTASKS = "),
                 ('-> torch.Tensor:\n    """Squared coefficient', '-> torch.Tensor:\n    """Reworded. Squared coefficient')]
        for old, new in edits:
            assert old in text
            text = text.replace(old, new, 1)
        return text

    reworded = copy_of_the_model_code(tmp_path, reword)
    assert (reworded / "model.py").read_text() != (copy_of_the_model_code(tmp_path) / "model.py").read_text()
    assert code_fingerprint(reworded) == current

    def retune(text: str) -> str:   # one constant the layers compute with
        assert "SEG_TEXT, SEG_IMAGE, SEG_USER = 0, 1, 2" in text
        return text.replace("SEG_TEXT, SEG_IMAGE, SEG_USER = 0, 1, 2", "SEG_TEXT, SEG_IMAGE, SEG_USER = 0, 2, 1")

    assert code_fingerprint(copy_of_the_model_code(tmp_path, retune)) != current


def test_not_a_directory(tmp_path):
    with pytest.raises(ArtifactError, match="no such folder.*make train"):
        load_artifact(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="not a directory"):
        load_artifact(tmp_path / "file")


# ------------------------------------------------------------------------ faults: one line, exit 2, from the jobs


def _flip_a_byte(path):
    data = bytearray((path / "model.safetensors").read_bytes())
    data[len(data) - 5] ^= 0x01
    (path / "model.safetensors").write_bytes(bytes(data))


def _pickle_weights(path):
    torch.save(trained_like_model().state_dict(), path / "model.safetensors")


def _forge_weights(path):
    """Garbage weights and a manifest rewritten to vouch for them."""
    (path / "model.safetensors").write_bytes(b"\x10" + bytes(64))
    rewrite_manifest_entry(path, "model.safetensors")


def _forge_config(path):
    """A config.json that is not JSON, with a manifest rewritten to vouch for it."""
    (path / "config.json").write_text("{not json")
    rewrite_manifest_entry(path, "config.json")


def _forge_manifest_path(path):
    """A manifest that lists a file outside the folder: it must not be read."""
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "size": 1}
    (path / "manifest.json").write_text(json.dumps(manifest))


FAULTS = {
    "missing manifest": (lambda p: (p / "manifest.json").unlink(), r"manifest\.json is missing \(the folder holds "
                         r"\['config\.json', 'model\.safetensors'\]\).*do not write one by hand"),
    "flipped byte": (_flip_a_byte, r"model\.safetensors does not match manifest\.json"),
    "pickle": (_pickle_weights, r"model\.safetensors is a pickle"),
    "forged weights": (_forge_weights, r"model\.safetensors is not a safetensors file"),
    "forged config": (_forge_config, r"config\.json is not JSON"),
    "manifest path outside": (_forge_manifest_path, r"lists \['\.\./\.\./etc/passwd'\], which are not file names"),
}


@pytest.mark.faults
@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_artifact_fault_is_one_artifact_error_that_says_what_to_do(saved, fault):
    _, path = saved
    damage, says = FAULTS[fault]
    damage(path)
    with pytest.raises(ArtifactError, match=says) as caught:
        load_artifact(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"artifact {path}:")
    assert "make train" in message and "good copy" in message


@pytest.mark.faults
@pytest.mark.parametrize("fault", list(FAULTS))
def test_score_job_exits_2_with_one_line_on_a_broken_artifact(saved, tmp_path, tiny_config_path, fault, capsys):
    """Said before Spark starts. (A missing folder is the run's input check's: test_nightly.)"""
    from pipeline.jobs.score_catalog import main

    _, path = saved
    damage, says = FAULTS[fault]
    damage(path)
    code = main(["--conf", str(tiny_config_path), "--set", f"data.root={tmp_path / 'tables'}",
                 "--set", f"scoring.model_dir={path}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: artifact {path}: ") and "make train" in err
    assert re.search(says, err), err
    assert not (tmp_path / "tables").exists()


# ------------------------------------------------------------------------ S3: a real server on loopback

BUCKET = "camenn-models"


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on a free loopback port, a bucket in it, and the AWS variables pyarrow reads pointing at it."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "camenn", "AWS_SECRET_ACCESS_KEY": "camenn",
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
            env.setenv(name, value)
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        yield client
    server.stop()


def test_s3_round_trip_with_immutable_versions(s3):
    root = f"s3a://{BUCKET}/camenn/model"   # Spark's scheme, as in conf/production.yaml
    first_model, second_model = trained_like_model(), trained_like_model("mose")
    first = save_artifact(root, first_model, METADATA)
    first_objects = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="camenn/model/versions/")["Contents"]}
    second = save_artifact(root, second_model, {"run": 2})

    assert first.startswith(f"{root}/versions/") and second != first
    assert list_versions(root) == [first, second]
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix="camenn/model/")["Contents"]
    assert {o["Key"]: o["ETag"] for o in listing if o["Key"] in first_objects} == first_objects   # untouched
    latest = s3.get_object(Bucket=BUCKET, Key="camenn/model/LATEST")["Body"].read().decode().strip()
    assert second.endswith(latest)

    art = load_artifact(root)   # the root resolves to LATEST
    assert art.path == second and art.metadata == {"run": 2}
    old = load_artifact(first)
    assert old.metadata == METADATA and check_artifact(first)["featurizer"] == METADATA["featurizer"]
    batch = random_batch(first_model.cfg)
    for t in first_model.cfg.tasks:
        assert torch.equal(first_model(batch)[t], old.model(batch)[t])
    assert load_artifact(f"s3://{BUCKET}/camenn/model").version == art.version   # s3:// and s3a:// are one bucket


def test_s3_tampering_and_a_missing_version_are_one_line(s3):
    root = f"s3a://{BUCKET}/tamper/model"
    version = save_artifact(root, trained_like_model(), METADATA)
    key = f"{version.split(BUCKET + '/', 1)[1]}/model.safetensors"
    data = bytearray(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[-5] ^= 0x01
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.safetensors does not match manifest\.json") as caught:
        load_artifact(root)
    assert str(caught.value).startswith(f"artifact {version}: ") and "\n" not in str(caught.value)

    # a save cut short before its manifest: the loader says the save did not finish
    s3.delete_object(Bucket=BUCKET, Key=key.replace("model.safetensors", "manifest.json"))
    with pytest.raises(ArtifactError, match="manifest.json is missing.*save did not finish"):
        load_artifact(version)
    with pytest.raises(ArtifactError, match="no such folder"):
        load_artifact(f"s3a://{BUCKET}/nowhere")
