"""A stand-in for SimpleITK on a GPU machine that lacks it (see bench_deformable_gpu.py).

Training the deformable network from a prepared PairSet never calls SimpleITK, but the
package's modules import it. With this folder first on PYTHONPATH those imports succeed, and
any use raises ImportError naming the problem. Never put it on the path where SimpleITK is
installed.
"""


class _Missing:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise ImportError("SimpleITK is not installed on this machine (stand-in module)")


def __getattr__(name: str) -> type:
    return _Missing
