"""revision.layout and revision.kustomize on an in-memory tree: how files are read, where objects come from.

kubectl itself runs in the integration cases of test_corpus.py; here a build's output is written by
the test, as kustomize would print it, to check how gitmesh reads it back.
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gitmesh.objects import Location
from gitmesh.plan.validate import validate
from gitmesh.revision import kustomize, layout
from gitmesh.revision.kustomize import MARK, Build, BuildPlan
from gitmesh.revision.load import RevisionFile
from gitmesh.sync.build import build
from tests import factory as f


class Files:
    """A revision as a dict of path -> text."""

    root = ""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files

    def is_file(self, path: str) -> bool:
        return path in self.files

    def is_dir(self, path: str) -> bool:
        return path in ("", ".") or any(p.startswith(path + "/") for p in self.files)

    def read(self, path: str) -> RevisionFile:
        data = self.files[path].encode()
        return RevisionFile(path, len(data), data)


MESH = f.dump(f.service("", "web", 80), f.service("", "web-v1", 80))
OVERLAY = "namespace: prod\nresources:\n- ../../base\npatches:\n- path: patch.yaml\n"


def tree(**extra: str) -> Files:
    return Files(
        {
            "mesh/base/kustomization.yaml": "resources:\n- mesh.yaml\n",
            "mesh/base/mesh.yaml": MESH,
            "mesh/overlays/prod/kustomization.yaml": OVERLAY,
            "mesh/overlays/prod/patch.yaml": "kind: Service\n",
            "mesh/overlays/prod/README.yaml": f.dump(f.namespace("prod")),
            "mesh/plain.yaml": f.dump(f.namespace("shop")),
            **extra,
        }
    )


def arrange(t: Files) -> layout.Arrangement:
    return layout.arrange(sorted(t.files), t)


def test_a_base_is_built_through_its_overlay_and_its_files_are_not_read_as_manifests() -> None:
    a = arrange(tree())
    assert a.diagnostics == ()
    (build,) = a.builds
    assert build.root == "mesh/overlays/prod/kustomization.yaml"
    assert build.files == (
        "mesh/base/kustomization.yaml",
        "mesh/base/mesh.yaml",
        "mesh/overlays/prod/kustomization.yaml",
        "mesh/overlays/prod/patch.yaml",
    )
    assert build.resources == {"mesh/base/mesh.yaml"}
    # A file beside the kustomization that it does not name is still a plain manifest.
    assert a.plain == ("mesh/overlays/prod/README.yaml", "mesh/plain.yaml")


def test_a_flux_kustomization_saved_as_kustomization_yaml_is_an_object_not_a_build() -> None:
    flux = "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata: {name: apps}\n"
    a = arrange(tree(**{"mesh/flux/kustomization.yaml": flux}))
    assert [b.root for b in a.builds] == ["mesh/overlays/prod/kustomization.yaml"]
    assert "mesh/flux/kustomization.yaml" in a.plain


def test_two_overlays_of_one_base_are_two_builds() -> None:
    a = arrange(tree(**{"mesh/overlays/dev/kustomization.yaml": "resources:\n- ../../base\n"}))
    assert [b.root for b in a.builds] == [
        "mesh/overlays/dev/kustomization.yaml",
        "mesh/overlays/prod/kustomization.yaml",
    ]


def test_helm_charts_are_reported_once_and_never_read() -> None:
    a = arrange(
        tree(
            **{
                "mesh/charts/web/Chart.yaml": "apiVersion: v2\nname: web-chart\nversion: 1.0.0\n",
                "mesh/charts/web/values.yaml": "replicas: 2\n",
                "mesh/charts/web/templates/a.yaml": "{{ .Values.x }}\n",
                "mesh/charts/web/templates/b.yaml": "{{- if .Values.y }}\n",
                "mesh/charts/web/charts/sub/Chart.yaml": "name: sub\n",
            }
        )
    )
    assert [(str(d.location), d.code) for d in a.diagnostics] == [("mesh/charts/web/Chart.yaml:1:1", "GM051")]
    assert "Helm chart 'web-chart' (2 template(s))" in a.diagnostics[0].message
    assert "helm template" in a.diagnostics[0].message
    assert not any("charts" in p for p in a.plain)


def refused(kustomization: str, **extra: str) -> list[tuple[int, str]]:
    """The problems of an overlay of the base: neither is built (the base is the overlay's business)."""
    a = arrange(tree(**{"mesh/overlays/prod/kustomization.yaml": kustomization, **extra}))
    assert a.builds == ()
    assert all(d.location.file == "mesh/overlays/prod/kustomization.yaml" for d in a.diagnostics)
    return [(d.location.line, d.message) for d in a.diagnostics]


def test_remote_bases_are_refused_before_anything_runs() -> None:
    for ref in (
        "github.com/example/mesh//base?ref=v1",
        "https://github.com/example/mesh.git//base",
        "git@github.com:example/mesh.git//base",
        "example.com/mesh/base",
        "../../base?ref=main",
    ):
        ((line, message),) = refused(f"resources:\n- ../../base\n- {ref}\n")
        assert line == 3
        assert message.startswith(f"resources: {ref!r}: a remote base"), message


def test_paths_leaving_the_repository_missing_files_and_helm_are_refused() -> None:
    assert refused("resources:\n- ../../base\n- ../../../../elsewhere\n") == [
        (3, "resources: '../../../../elsewhere': leaves the repository")
    ]
    assert refused("resources:\n- ../../base\n- /etc/passwd\n") == [
        (3, "resources: '/etc/passwd': an absolute path; name files relative to the kustomization")
    ]
    assert refused("resources:\n- ../../base\npatches:\n- path: nope.yaml\n") == [
        (4, "patches: 'nope.yaml' does not exist in the revision")
    ]
    assert refused("resources:\n- ../../base\n- ../../nowhere\n", **{"mesh/nowhere/x.txt": ""}) == [
        (3, "resources: '../../nowhere' is a directory without a kustomization")
    ]
    assert refused("resources: [../../base]\nhelmCharts:\n- name: web\n") == [
        (2, "helmCharts needs Helm, which gitmesh does not run")
    ]


def test_generator_files_and_inline_patches() -> None:
    a = arrange(
        tree(
            **{
                "mesh/overlays/prod/kustomization.yaml": OVERLAY
                + "configMapGenerator:\n- name: c\n  files: [key=conf.txt]\n  envs: [vars.env]\n"
                + "patchesStrategicMerge:\n- |-\n  kind: Service\n  metadata: {name: web}\n"
                + "transformers: [labels.yaml]\n",
                "mesh/overlays/prod/labels.yaml": "apiVersion: builtin\nkind: LabelTransformer\n",
                "mesh/overlays/prod/conf.txt": "x",
                "mesh/overlays/prod/vars.env": "A=1",
            }
        )
    )
    assert a.diagnostics == ()
    assert {
        "mesh/overlays/prod/conf.txt",
        "mesh/overlays/prod/vars.env",
        "mesh/overlays/prod/labels.yaml",
    } <= set(a.builds[0].files)
    assert "mesh/overlays/prod/labels.yaml" not in a.plain


def test_kustomizations_that_include_each_other_end() -> None:
    a = arrange(
        Files(
            {
                "a/kustomization.yaml": "resources: [../b]\n",
                "b/kustomization.yaml": "resources: [../a]\n",
            }
        )
    )
    assert a.builds == ()  # each is included by the other: neither is a root
    assert a.plain == ()


def kustomize_like(b: Build, namespace: str, prefix: str = "", weight: int | None = None) -> Build:
    """What kustomize prints for ``b``'s marked inputs with ``namespace:``, ``namePrefix`` and a patch."""
    docs = []
    for source in b.inputs:
        text, problems = kustomize.mark(source)
        assert problems == []
        for doc in yaml.safe_load_all(text):
            doc["metadata"]["namespace"] = namespace
            doc["metadata"]["name"] = prefix + doc["metadata"]["name"]
            if weight is not None and doc["kind"] == "Service":
                doc["spec"]["ports"][0]["port"] = weight
            docs.append(doc)
    docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "generated"}})
    return Build(b.root, b.inputs, yaml.safe_dump_all(docs).encode())


def test_rendered_objects_point_where_they_were_written_and_say_what_kustomize_did() -> None:
    t = tree()
    plan = arrange(t).builds[0]
    b = Build(plan.root, tuple(t.read(p) for p in sorted(plan.resources)))
    found, problems = kustomize.load_build(kustomize_like(b, "prod", "p-", 70000))
    assert problems == []
    by_name = {m.obj["metadata"]["name"]: (m, note) for m, note in found}
    m, note = by_name["p-web-v1"]
    assert MARK not in json.dumps(m.obj)
    assert "annotations" not in m.obj["metadata"]
    assert m.locate(("spec", "ports", 0, "port")) == Location("mesh/base/mesh.yaml", 23, 5)
    assert note == (
        "rendered by kustomize in mesh/overlays/prod; namespace 'prod' set by its namespace:; "
        "name 'web-v1' became 'p-web-v1' by namePrefix/nameSuffix; spec.ports changed by a patch"
    )
    generated, note = by_name["generated"]
    assert generated.location == Location("mesh/overlays/prod/kustomization.yaml")
    assert note == "generated by kustomize in mesh/overlays/prod"

    loaded = layout.load([], [kustomize_like(b, "prod", "p-", 70000)])
    explained = layout.explain(validate(loaded.manifests, loaded.diagnostics).diagnostics, loaded.notes)
    (port,) = [d for d in explained if d.path == "spec.ports[0].port" and "p-web-v1" in str(d.ref)]
    assert port.location == Location("mesh/base/mesh.yaml", 23, 5)
    assert port.message.endswith("(" + by_name["p-web-v1"][1] + ")")


def test_a_failed_build_brings_its_diagnostics_and_no_objects() -> None:
    problem = kustomize.Diagnostic(Location("k/kustomization.yaml"), "GM052", "kubectl kustomize failed: x")
    assert kustomize.load_build(Build("k/kustomization.yaml", problems=(problem,))) == ([], [problem])


def test_the_default_namespace_goes_to_objects_that_name_none() -> None:
    files = [
        RevisionFile("a.yaml", 0, f.dump(f.service("", "web", 80), f.service("other", "api", 80)).encode()),
        RevisionFile("b.yaml", 0, f.dump(f.namespace("shop"), f.service("", "cart", 80)).encode()),
    ]
    loaded = layout.load(files, [], namespace="team")
    assert sorted(str(m.ref) for m in loaded.manifests) == [
        "Namespace/shop",  # cluster-scoped: no namespace
        "Service/other/api",  # written with one
        "Service/shop/cart",  # the file's single Namespace comes first
        "Service/team/web",
    ]


def test_foreign_kinds_are_one_line_per_kind_and_silent_when_acknowledged() -> None:
    deployments = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"d{i}", "namespace": "x"}}
        for i in range(59)
    ]
    release = {"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease", "metadata": {"name": "r"}}
    files = [
        RevisionFile("deploy.yaml", 0, f.dump(*deployments).encode()),
        RevisionFile("flux.yaml", 0, f.dump(release, f.service("x", "web")).encode()),
    ]
    loaded = layout.load(files, [])
    assert [str(m.ref) for m in loaded.manifests] == ["Service/x/web"]
    assert [(str(d.location), d.code) for d in loaded.diagnostics] == [
        ("deploy.yaml:1:1", "GM011"),
        ("flux.yaml:1:1", "GM011"),
    ]
    assert loaded.diagnostics[0].message.startswith(
        "59 Deployment (apps/v1) objects, the first here: not a kind gitmesh manages, not applied."
    )
    assert "'kind: apps/Deployment' in .gitmeshignore" in loaded.diagnostics[0].message
    quiet = layout.load(files, [], acknowledged=frozenset({("apps", "Deployment")}))
    assert [d.message.split(" ")[0] for d in quiet.diagnostics] == ["HelmRelease"]


def test_the_core_group_is_written_without_a_slash() -> None:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "x"}}
    (d,) = layout.load([RevisionFile("c.yaml", 0, f.dump(config_map).encode())], []).diagnostics
    assert "'kind: ConfigMap'" in d.message
    assert posixpath.basename(d.location.file) == "c.yaml"


def test_a_crafted_path_is_never_written_outside_the_private_copy(tmp_path: Path) -> None:
    """A tree with entries named '..' could name files above the copy; they are refused, not written."""
    escaping = "../" * 40 + str(tmp_path).lstrip("/") + "/escaped.yaml"
    t = Files({"k/kustomization.yaml": "resources: [x.yaml]\n", "k/x.yaml": MESH, escaping: MESH})
    plan = BuildPlan("k/kustomization.yaml", ("k/kustomization.yaml", escaping, "k/x.yaml"), frozenset())
    result = build(plan, t)
    assert [(d.location.file, d.code, d.message) for d in result.problems] == [
        (escaping, "GM052", "the path leaves the repository")
    ]
    assert not (tmp_path / "escaped.yaml").exists()


def test_a_managed_kind_in_another_group_is_left_to_validation_not_summed_up() -> None:
    """OSM's demo MeshConfig as apiVersion v1, or a group typo, must never quietly leave the revision."""
    typo = {**f.mesh_config(True), "apiVersion": "v1"}
    knative = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "k", "namespace": "x"},
    }
    files = [RevisionFile("m.yaml", 0, f.dump(typo, knative).encode())]
    assert [m.obj["apiVersion"] for m in layout.load(files, []).manifests] == ["v1", "serving.knative.dev/v1"]
    acknowledged = frozenset({("serving.knative.dev", "Service")})
    assert [m.obj["apiVersion"] for m in layout.load(files, [], acknowledged=acknowledged).manifests] == [
        "v1"
    ]


KUSTOMIZATION_FIELDS = [
    "resources",
    "bases",
    "components",
    "crds",
    "patches",
    "patchesStrategicMerge",
    "patchesJson6902",
    "replacements",
    "transformers",
    "openapi",
    "configMapGenerator",
    "secretGenerator",
    "helmCharts",
]
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from(["../../base", "mesh.yaml", "x", "/", "..", ""]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["resources", "patches", "path", "files", "envs", "env", "configMapGenerator", "openapi"]
            ),
            inner,
            max_size=3,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(KUSTOMIZATION_FIELDS), _JSON))
def test_any_kustomization_is_arranged_without_a_traceback(body: dict[str, object]) -> None:
    t = tree(**{"mesh/overlays/prod/kustomization.yaml": json.dumps(body)})
    a = arrange(t)
    assert all(d.code in ("GM052", "GM001") for d in a.diagnostics)
    assert all(_inside(p) for b in a.builds for p in b.files)


def _inside(path: str) -> bool:
    return not path.startswith(("../", "/")) and path != ".."
