"""The controller builder: metrics on the manager's registry, the own-object watch by default."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from capi_remote.kube import Controller, Metrics, Request
from capi_remote.kube.client import KubeClient, Resource
from capi_remote.kube.informer import Event, Selector
from capi_remote.kube.manager import Manager, ManagerSettings
from tests.unit.test_controller import ScriptedReconciler, succeed

pytestmark = pytest.mark.timeout(60)  # a hang guard for regressions, not a speed target

WIDGETS = Resource("example.com", "v1", "widgets", "Widget")
GADGETS = Resource("example.com", "v1", "gadgets", "Gadget")


def manager() -> Manager:
    client = KubeClient(object())  # type: ignore[arg-type]  # never asked: no informer runs
    return Manager(client, ManagerSettings(health_address=None, metrics_address=None))


def cached(
    manager: Manager, resource: Resource, name: str, selector: Selector = Selector()
) -> None:
    """Put an object in the shared informer's store, as a list would."""
    obj = {"metadata": {"namespace": "default", "name": name, "resourceVersion": "1"}}
    manager.informer(resource, selector).store.upsert(obj)


def gadget_to_widget(event: Event) -> Iterable[Request]:
    return [Request("default", f"widget-of-{event.obj['metadata']['name']}")]


async def queued(controller: Controller) -> set[Request]:
    requests = set()
    while len(controller.queue):
        requests.add(await controller.queue.get())
    return requests


async def test_a_built_controller_reports_on_the_managers_metrics() -> None:
    mgr = manager()
    reconciler = ScriptedReconciler(succeed)
    controller = mgr.controller("widget", reconciler, for_=WIDGETS, workers=3).build()
    assert mgr.controllers == [controller]
    await controller.start()
    controller.enqueue(Request("default", "w"))
    await reconciler.wait_finished(1)
    await controller.stop()
    registry = mgr.metrics.registry
    labels = {"controller": "widget", "result": "success"}
    assert registry.get_sample_value("controller_runtime_reconcile_total", labels) == 1
    assert (
        registry.get_sample_value(
            "controller_runtime_max_concurrent_reconciles", {"controller": "widget"}
        )
        == 3
    )


async def test_the_primary_kind_is_watched_by_default_and_watches_map_the_others() -> None:
    mgr = manager()
    cached(mgr, WIDGETS, "w")
    cached(mgr, GADGETS, "g")
    controller = (
        mgr.controller("widget", ScriptedReconciler(succeed), for_=WIDGETS)
        .watches(GADGETS, gadget_to_widget)
        .build()
    )
    assert await queued(controller) == {Request("default", "w"), Request("default", "widget-of-g")}


async def test_the_primary_selector_scopes_the_own_object_watch() -> None:
    mgr = manager()
    labelled = Selector(label_selector="team=a")
    cached(mgr, WIDGETS, "everyone")
    cached(mgr, WIDGETS, "team-a", labelled)
    controller = mgr.controller(
        "widget", ScriptedReconciler(succeed), for_=WIDGETS, selector=labelled
    ).build()
    assert await queued(controller) == {Request("default", "team-a")}


def test_a_controller_on_other_metrics_is_refused() -> None:
    mgr = manager()
    stray = Controller("widget", ScriptedReconciler(succeed), metrics=Metrics())
    with pytest.raises(ValueError, match="other metrics"):
        mgr.add(stray)
    assert mgr.controllers == []


def test_a_builder_builds_once() -> None:
    mgr = manager()
    builder = mgr.controller("widget", ScriptedReconciler(succeed), for_=WIDGETS)
    builder.build()
    with pytest.raises(RuntimeError, match="already built"):
        builder.build()
    with pytest.raises(RuntimeError, match="already built"):
        builder.watches(GADGETS, gadget_to_widget)
    assert len(mgr.controllers) == 1
