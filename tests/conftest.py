import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture(scope="session")
def chelsea() -> Image.Image:
    """A real photo shipped with scikit-image (451x300 RGB cat)."""
    import skimage.data

    return Image.fromarray(skimage.data.chelsea())


@pytest.fixture(scope="session")
def coffee() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.coffee())


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """Generated ImageFolder: two ImageNet synset classes (tench n01440764 = 0, goldfish
    n01443537 = 1), 5 images each, mixed JPEG/PNG and sizes, plus one non-image file."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for c in ("n01443537", "n01440764"):
        (root / c).mkdir()
        for i in range(5):
            a = rng.integers(0, 256, size=(24 + 4 * i, 32, 3), dtype=np.uint8)
            if i % 2:
                Image.fromarray(a).save(root / c / f"{c}_{i}.png")
            else:
                Image.fromarray(a).save(root / c / f"{c}_{i}.JPEG", quality=90)
    (root / "n01440764" / "README.txt").write_text("not an image")
    return root


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole suite (starting Ray costs seconds)."""
    from pipelines.stages.ray_session import ensure_ray

    ray = ensure_ray(num_cpus=2, quiet=True)
    yield ray
    ray.shutdown()
