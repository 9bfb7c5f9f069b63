"""Shared fixtures: tiny seeded pipelines built in code; no test touches the network."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import contextlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    run_slow = os.environ.get("RUN_SLOW", "0") == "1"
    has_gpu = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow test: set RUN_SLOW=1 to run"))
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def tiny_sd3():
    from explore.pipeline.tiny import tiny_sd3

    return tiny_sd3(seed=0)


@pytest.fixture(scope="session")
def tiny_flux():
    from explore.pipeline.tiny import tiny_flux

    return tiny_flux(seed=0)


@pytest.fixture(params=["sd3", "flux"])
def tiny(request, tiny_sd3, tiny_flux):
    return tiny_sd3 if request.param == "sd3" else tiny_flux


@pytest.fixture(scope="session")
def shapes_pipe():
    import explore

    return explore.load_pipeline("shapes")


# ---------------------------------------------------------------------------------------------
# Sessions and a transformer-call counter, shared by the session, panel and notebook-helper tests
# ---------------------------------------------------------------------------------------------

SESSION_GRID = (0.0, 1.0, 2.0)
SESSION_FAST = {"steps": 2, "t_render": 0.1}  # few optimisation steps, a short render


@pytest.fixture()
def count_calls():
    """``with count_calls(pipe) as calls:`` counts transformer forward calls (an instance attribute shadows the
    class's forward and is removed after)."""

    @contextlib.contextmanager
    def counting(pipe):
        tr = pipe.transformer
        calls = []
        original = tr.forward

        def forward(*args, **kwargs):
            calls.append(1)
            return original(*args, **kwargs)

        tr.forward = forward
        try:
            yield calls
        finally:
            del tr.forward

    return counting


@pytest.fixture()
def tiny_session(tiny_sd3):
    from explore.views.session import EditSession

    # templates="prompt": directions swap the word in the source prompt (the tiny tokenizers are 16 characters long)
    return EditSession(tiny_sd3, SESSION_GRID, SESSION_FAST, templates="prompt")


@pytest.fixture()
def shapes_session(shapes_pipe):
    from explore.views.session import EditSession

    return EditSession(shapes_pipe, SESSION_GRID, SESSION_FAST, n_templates=8)
