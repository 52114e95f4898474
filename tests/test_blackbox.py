"""BlackBox operator: conversions, executors (threads, processes, Dask on 127.0.0.1), validation errors."""
import functools
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest
import torch

from invsolve.errors import InvsolveError, ShapeError
from invsolve.operators.blackbox import BlackBox, BlackBoxError

RNG = np.random.default_rng(0)
M = RNG.standard_normal((5, 12)).astype(np.float32)


def project(batch):
    """(n, 1, 3, 4) numpy -> (n, 5)."""
    assert isinstance(batch, np.ndarray)
    return batch.reshape(len(batch), -1) @ M.T


def _x(n=7, dtype=torch.float32):
    return torch.from_numpy(RNG.standard_normal((n, 1, 3, 4))).to(dtype)


def test_numpy_fn_end_to_end():
    op = BlackBox(project, (1, 3, 4), (5,))
    assert not op.is_linear
    x = _x()
    y = op(x)
    assert y.shape == (7, 5) and y.dtype == torch.float32
    torch.testing.assert_close(y, x.reshape(7, -1) @ torch.from_numpy(M).T)
    assert op(x.double()).dtype == torch.float64
    with pytest.raises(ShapeError):
        op(torch.zeros(2, 1, 4, 4))


def test_shapes_are_optional_but_outputs_must_agree():
    x = _x(6)
    torch.testing.assert_close(BlackBox(project)(x), BlackBox(project, (1, 3, 4), (5,))(x))

    def ragged(batch):  # the second chunk returns a different per-item shape
        return project(batch) if batch[0, 0, 0, 0] == x[0, 0, 0, 0].item() else project(batch)[:, :4]

    with pytest.raises(BlackBoxError, match=r"items 3-5 \(chunk 1 = items 3\.\.5\): output has shape \(3, 4\)"):
        BlackBox(ragged, chunk_size=3)(x)


def test_per_item_chunks_and_torch_backend():
    seen = []

    def per_item(item):
        assert isinstance(item, torch.Tensor) and item.shape == (1, 3, 4)
        seen.append(threading.get_ident())
        return item.sum(dim=(0, 1)) * 2

    op = BlackBox(per_item, (1, 3, 4), (4,), batched=False, chunk_size=3, backend="torch")
    x = _x(8)
    torch.testing.assert_close(op(x), x.sum(dim=(1, 2)) * 2)
    assert len(seen) == 8


def test_no_gradient_and_complex_data():
    x = _x().requires_grad_()
    y = BlackBox(project, (1, 3, 4), (5,))(x)
    assert not y.requires_grad
    z = torch.complex(_x(4), _x(4))
    op = BlackBox(lambda a: np.fft.fft2(a, norm="ortho"), (1, 3, 4), (1, 3, 4), input_complex=True,
                  output_complex=True)
    w = op(z)
    assert w.dtype == torch.complex64
    torch.testing.assert_close(w, torch.fft.fft2(z, norm="ortho"), rtol=1e-5, atol=1e-5)


def test_thread_executor_chunks():
    sizes = []

    def fn(batch):
        sizes.append(len(batch))
        return project(batch)

    x = _x(10)
    with ThreadPoolExecutor(2) as ex:
        y = BlackBox(fn, (1, 3, 4), (5,), executor=ex, chunk_size=3)(x)
        assert sorted(sizes) == [1, 3, 3, 3]
        sizes.clear()
        BlackBox(fn, (1, 3, 4), (5,), executor=ex)(x)  # default: one chunk per worker
        assert sorted(sizes) == [5, 5]
    torch.testing.assert_close(y, BlackBox(project, (1, 3, 4), (5,))(x))


def test_process_executor_and_nan_item():
    x = _x(9).abs() + 0.1
    with ProcessPoolExecutor(2) as ex:
        op = BlackBox(np.log, (1, 3, 4), (1, 3, 4), executor=ex, chunk_size=4)
        torch.testing.assert_close(op(x), x.log())
        x[6, 0, 1, 2] = -1.0  # log(-1) = NaN in item 6 (chunk 1)
        with pytest.raises(BlackBoxError, match=r"item 6 \(chunk 1") as err:
            op(x)
        assert err.value.items == [6] and err.value.chunks == [1]
        op2 = BlackBox(functools.partial(np.multiply, 3.0), (1, 3, 4), (1, 3, 4), batched=False, executor=ex)
        torch.testing.assert_close(op2(x), 3 * x)
        with pytest.raises(BlackBoxError, match="executor task failed .*picklable"):  # lambdas do not pickle
            BlackBox(lambda b: b, executor=ex)(x)


def test_malformed_outputs_name_the_items():
    x = _x(6)

    def wrong_shape_item(item):
        return np.zeros(4 if item[0, 0, 0] == x[4, 0, 0, 0].item() else 5)

    with pytest.raises(BlackBoxError, match=r"item 4 \(chunk 0 = items 0\.\.5\): output has shape \(4,\)") as err:
        BlackBox(wrong_shape_item, (1, 3, 4), (5,), batched=False)(x)
    assert err.value.items == [4] and isinstance(err.value, InvsolveError)

    def nan_batch(batch):
        out = project(batch)
        out[1] = np.inf  # second item of every chunk of 2
        return out

    with pytest.raises(BlackBoxError, match="NaN/Inf") as err:
        BlackBox(nan_batch, (1, 3, 4), (5,), chunk_size=2)(x)
    assert err.value.items == [1, 3, 5] and err.value.chunks == [0, 1, 2]

    with pytest.raises(BlackBoxError, match=r"items 0-5 .*expected \(6, 5\)"):
        BlackBox(lambda b: project(b)[:-1], (1, 3, 4), (5,))(x)
    with pytest.raises(BlackBoxError, match="not an array"):
        BlackBox(lambda b: "oops", (1, 3, 4), (5,))(x)
    with pytest.raises(BlackBoxError, match="output_complex=False"):
        BlackBox(lambda b: project(b) * 1j, (1, 3, 4), (5,))(x)


def test_exceptions_inside_fn_name_the_items():
    x = _x(6)

    def fails_on_item_2(item):
        if item[0, 0, 0] == x[2, 0, 0, 0].item():
            raise ValueError("solver diverged")
        return project(item[None])[0]

    with ThreadPoolExecutor(2) as ex:
        with pytest.raises(BlackBoxError, match=r"item 2 \(chunk 0.*ValueError: solver diverged") as err:
            BlackBox(fails_on_item_2, (1, 3, 4), (5,), batched=False, executor=ex, chunk_size=3)(x)
    assert err.value.items == [2]

    def fails_batched(batch):
        raise RuntimeError("license server unreachable")

    with pytest.raises(BlackBoxError, match=r"items 2-3 \(chunk 1 = items 2\.\.3\): fn raised RuntimeError") as err:
        BlackBox(lambda b: fails_batched(b) if len(b) == 2 and b[0, 0, 0, 0] == x[2, 0, 0, 0].item() else project(b),
                 (1, 3, 4), (5,), chunk_size=2)(x)
    assert err.value.items == [2, 3] and err.value.chunks == [1]


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_dask_executor(dask_client):
    m = M.copy()

    def fn(batch):  # a closure: cloudpickle ships it by value to the worker processes
        return batch.reshape(len(batch), -1) @ m.T

    x = _x(10)
    op = BlackBox(fn, (1, 3, 4), (5,), executor=dask_client.get_executor())
    assert op._chunks(10) == [(0, 5), (5, 10)]  # one chunk per Dask worker thread
    torch.testing.assert_close(op(x), BlackBox(project, (1, 3, 4), (5,))(x))

    def bad(item):
        if item.sum() > 1e3:
            raise ArithmeticError("overflow")
        return item.ravel()[:5]

    x[7] = 1e4
    with pytest.raises(BlackBoxError, match=r"item 7 .*ArithmeticError: overflow") as err:
        BlackBox(bad, (1, 3, 4), (5,), batched=False, executor=dask_client.get_executor(), chunk_size=2)(x)
    assert err.value.items == [7] and err.value.chunks == [3]
