"""The README's Python example runs as written and writes a real PNG."""

import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import save_file

from zfjax.nets import network, weights

ROOT = Path(__file__).resolve().parents[1]
IMAGENETTE = ROOT.parent / "shared" / "data" / "imagenette"


def test_readme_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "README has no python example"
    photos = sorted((IMAGENETTE / "val").glob("*/*.JPEG"))[:1]
    if photos:
        shutil.copy(photos[0], tmp_path / "photo.jpg")
    else:  # no real images on this machine: any photo-sized JPEG will do
        noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8)
        Image.fromarray(noise).save(tmp_path / "photo.jpg")
    # The example loads vgg16.safetensors: real torchvision key names, 1/16 of the widths.
    config = network.Network(arch="vgg16", num_classes=1000, width=0.0625)
    rng = np.random.default_rng(0)
    save_file({key: (rng.normal(size=shape) * np.sqrt(2 / np.prod(shape[1:]))).astype(np.float32)
               if len(shape) > 1 else np.zeros(shape, np.float32)
               for key, shape in weights.torchvision_shapes(config).items()},
              str(tmp_path / "vgg16.safetensors"))
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {"__name__": "__readme__"})
    png = Image.open(tmp_path / "projection.png")
    assert png.mode == "RGB" and 50 <= png.size[0] <= 224
    assert np.asarray(png).std() > 0


def test_readme_test_commands_are_ci_and_the_registered_quick_loop():
    """CI (.ci/run) runs the README's first test command, which runs everything; the
    quick loop deselects the registered ``slow`` marker."""
    import tomllib

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Test\n", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0].strip() for line in section.splitlines()
                if line.startswith("python -m pytest")]
    everything = "python -m pytest -q -n 2 --dist loadfile"
    assert commands == [everything, everything + ' -m "not slow"']
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("\n" + everything)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert any(m.startswith("slow:") for m in project["tool"]["pytest"]["ini_options"]["markers"])
    extra = project["project"]["optional-dependencies"]["test"]  # what CI installs
    assert any(r.startswith("pytest-xdist") for r in extra)  # -n, --dist


def test_where_things_live_names_every_folder_and_module():
    """The README's last section is the map of the tree: every layer folder and every
    module in it (a moved or new module must be placed there)."""
    text = (ROOT / "README.md").read_text().split("## Where things live", 1)[1]
    package = ROOT / "zfjax"
    missing = []
    for folder in ("inputs", "nets", "train", "analyses"):
        if f"`zfjax/{folder}/`" not in text:
            missing.append(f"zfjax/{folder}/")
        missing += [f"zfjax/{folder}/{p.name}" for p in sorted((package / folder).glob("*.py"))
                    if p.stem != "__init__" and f"`{p.stem}`" not in text]
    missing += [f"zfjax/{folder}/" for folder in ("figures", "commands")
                if f"`zfjax/{folder}/`" not in text]
    missing += [f"zfjax/{p.name}" for p in sorted(package.glob("*.py"))
                if not p.stem.startswith("_") and f"`{p.stem}`" not in text]
    assert not missing, f"README's 'Where things live' does not mention {missing}"
