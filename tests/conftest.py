"""Shared fixtures: tiny seeded pipelines built in code; no test touches the network."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
    from explore.tiny import tiny_sd3

    return tiny_sd3(seed=0)


@pytest.fixture(scope="session")
def tiny_flux():
    from explore.tiny import tiny_flux

    return tiny_flux(seed=0)


@pytest.fixture(params=["sd3", "flux"])
def tiny(request, tiny_sd3, tiny_flux):
    return tiny_sd3 if request.param == "sd3" else tiny_flux


@pytest.fixture(scope="session")
def shapes_pipe():
    import explore

    return explore.load_pipeline("shapes")
