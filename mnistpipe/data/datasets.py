"""The datasets the pipeline knows: canonical idx file names, official checksums, classes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from mnistpipe.config import Config

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
IDX_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
DIGITS = tuple(str(digit) for digit in range(10))  # the classes of a handwritten-digit dataset


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """A dataset in MNIST's idx format; docs/guides/add-a-dataset.md registers a new one."""

    name: str
    md5: dict[str, str]  # idx file name -> MD5 of the extracted (uncompressed) file
    classes: tuple[str, ...]  # class index -> human-readable name
    description: str  # what the images are and where they come from (for the model card)
    subject: str  # what every image shows, for "this does not look like {subject}"
    torchvision_class: str | None = None  # its class in torchvision.datasets, if it has one
    debian_dir: str | None = None  # where a Debian package installs the idx files

    @property
    def digits(self) -> bool:
        """Handwritten digits 0-9: the foreign-digit check and the digit wording apply."""
        return self.classes == DIGITS


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        torchvision_class="MNIST",
        md5={
            TRAIN_IMAGES: "6bbc9ace898e44ae57da46a324031adb",
            TRAIN_LABELS: "a25bea736e30d166cdddb491f175f624",
            TEST_IMAGES: "2646ac647ad5339dbf082846283269ea",
            TEST_LABELS: "27ae3e4e09519cfbb04c329615203637",
        },
        classes=DIGITS,
        description=(
            "MNIST (LeCun, Cortes and Burges): handwritten digits 0-9 from NIST's Special"
            " Databases 1 and 3, written by US Census Bureau employees and high-school"
            " students; each fitted into 20x20 pixels and centred by mass in 28x28, grey"
            " levels 0-255, light ink on black"
        ),
        subject="a digit",
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        torchvision_class="FashionMNIST",
        md5={
            TRAIN_IMAGES: "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            TRAIN_LABELS: "9018921c3c673c538a1fc5bad174d6f9",
            TEST_IMAGES: "8181f5470baa50b63fa0f6fddb340f0a",
            TEST_LABELS: "15d484375f8d13e6eb1aabb0c3f46965",
        },
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        description=(
            "Fashion-MNIST (Xiao, Rasul and Vollgraf, Zalando Research): photos of clothing,"
            " shoes and bags from Zalando's catalogue in 10 classes, reduced to 28x28 grey"
            " levels 0-255, light on black"
        ),
        subject="clothing",
        debian_dir="/usr/share/datasets/fashion-mnist",
    ),
}


class DataParams(Config):
    dataset: Literal[tuple(DATASETS)] = Field(description="the dataset to train and test on")
