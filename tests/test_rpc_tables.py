"""Every RPC of recommender.proto has a server handler and a client method, sync and async.

The tables are read from the generated descriptors, so these tests fail as soon as an RPC is added to
the proto (and the stubs regenerated) without its handler or client methods.
"""

from __future__ import annotations

import inspect
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from towerserve.clients import loadtest
from towerserve.clients.base import CALLS
from towerserve.clients.client import AsyncRecommenderClient, RecommenderClient
from towerserve.server.api.holder import EngineHolder
from towerserve.server.api.servicer import AdminServicer, RecommenderServicer, generic_handlers
from towerserve.server.core.config import EngineConfig
from towerserve.server.core.rpcs import ADMIN, RECOMMENDER, RPCS, SERVICES, Rpc
from towerserve.v1 import recommender_pb2 as pb

SERVICERS = {"Recommender": RecommenderServicer, "Admin": AdminServicer}


def _missing_handlers(servicer: type, rpcs: dict[str, Rpc]) -> list[str]:
    return [name for name in rpcs if not inspect.iscoroutinefunction(getattr(servicer, name, None))]


def _missing_methods(client: type, is_async: bool) -> list[str]:
    check = inspect.iscoroutinefunction if is_async else inspect.isfunction
    return [rpc.name for rpc in RPCS.values() if not check(getattr(client, rpc.python_name, None))]


def test_the_table_is_the_proto():
    # Every service and method of the file descriptor, nothing else.
    want = {
        (s.full_name, m.name, m.input_type.full_name, m.output_type.full_name)
        for s in pb.DESCRIPTOR.services_by_name.values()
        for m in s.methods
    }
    got = {
        (r.service, r.name, r.request.DESCRIPTOR.full_name, r.response.DESCRIPTOR.full_name)
        for r in RPCS.values()
    }
    assert got == want and len(want) >= 6
    assert set(SERVICES) == set(SERVICERS) == {"Recommender", "Admin"}
    assert RPCS["GetModelInfo"].path == "/towerserve.v1.Recommender/GetModelInfo"
    assert RPCS["GetModelInfo"].request is pb.GetModelInfoRequest
    assert RPCS["Reload"].response is pb.ReloadResponse
    assert [RPCS[n].python_name for n in ("GetModelInfo", "UpsertItems", "Reload")] == [
        "model_info",
        "upsert_items",
        "reload",
    ]


@pytest.mark.parametrize("service", sorted(SERVICERS))
def test_every_rpc_has_a_servicer_handler(service):
    assert _missing_handlers(SERVICERS[service], SERVICES[service]) == []


def test_the_server_routes_every_rpc():
    handlers = generic_handlers(EngineHolder(Path("/nonexistent"), EngineConfig()))
    for rpc in RPCS.values():
        details = SimpleNamespace(method=rpc.path, invocation_metadata=())
        routed = [h for h in handlers if h.service(details) is not None]
        assert len(routed) == 1, rpc.path
        # Requests parse with the proto's own request type.
        handler = routed[0].service(details)
        assert handler.request_deserializer(rpc.request().SerializeToString()) == rpc.request()


@pytest.mark.parametrize("client, is_async", [(RecommenderClient, False), (AsyncRecommenderClient, True)])
def test_every_rpc_has_a_client_method(client, is_async):
    assert _missing_methods(client, is_async) == []
    assert set(RPCS) <= set(CALLS)


def test_the_checks_catch_a_missing_rpc():
    # The helpers above must see a gap: strip one method and they name it.
    class Partial(RecommenderServicer):
        Score = None

    class PartialClient(RecommenderClient):
        upsert_items = None

    assert _missing_handlers(Partial, RECOMMENDER) == ["Score"]
    assert _missing_handlers(RecommenderServicer, ADMIN) == ["Reload"]
    assert _missing_methods(PartialClient, is_async=False) == ["UpsertItems"]
    assert _missing_methods(RecommenderClient, is_async=True) != []


def test_the_load_test_drives_rpcs_of_the_proto():
    paths = {RPCS[name].path for name in ("Recommend", "Score", "Evaluate", "RecordInteractions")}
    for name in loadtest.RPCS:
        if name == "health":
            continue
        cfg = loadtest.LoadTestConfig(target="x", rpc=name, user_ids=["u"], item_ids=["i"])
        path, pool = loadtest._requests(cfg, random.Random(0), n=16)
        assert path in paths
        rpc = next(r for r in RPCS.values() if r.path == path)
        assert rpc.python_name == name and rpc.request.FromString(pool[0]).ByteSize() > 0


def test_model_info_types_carry_every_field_of_the_response():
    from dataclasses import fields

    from towerserve.clients.types import ModelInfo as ClientModelInfo
    from towerserve.server.core.types import ModelInfo as ServerModelInfo

    want = [f.name for f in pb.GetModelInfoResponse.DESCRIPTOR.fields]
    assert [f.name for f in fields(ServerModelInfo)] == want
    assert [f.name for f in fields(ClientModelInfo)] == want


def test_loadtest_command_offers_every_rpc_the_harness_drives():
    # The CLI parser may import only the standard library, so its --rpc choices are written out;
    # this keeps them equal to the harness's table, which is read from the proto.
    from towerserve.clients.cli import _build

    _, commands = _build()
    rpc = next(a for a in commands["loadtest"]._actions if "--rpc" in a.option_strings)
    assert sorted(rpc.choices) == sorted(loadtest.RPCS)
