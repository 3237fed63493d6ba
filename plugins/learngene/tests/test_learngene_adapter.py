"""The learngene: adapter: options, student builders, distillation, the cache key."""

from __future__ import annotations

import attrs
import pytest
import stitchframe_learngene
import torch
from _learngene_cases import PREPROCESS, digits_tensors, toy_model
from stitchframe_learngene import DistilledStudent, DistillOptions, PoolOptions, StudentSpec, vit_anchor
from stitchframe_learngene.distill import refit_transforms, run_with_activations
from stitchframe_learngene.students import STUDENT_BUILDERS, build_student

import stitchframe
from stitchframe import AnchorSpec, SpecError, UnknownNameError, structure_options


def _pool(tmp_path, **kw):
    return {
        "teacher": "toyvit:32",
        "students": [{"name": "a", "width": 16, "depth": 2}, {"name": "b", "width": 24, "depth": 4, "heads": 2}],
        "data": {"name": "digits16"},
        "distill": {"steps": 2, "batch_size": 16, "refit_batches": 1},
        "cache_dir": str(tmp_path),
        **kw,
    }


def _load(source, options, regs):
    return stitchframe.load_anchor(AnchorSpec(source=source, options=options), regs, where="anchors[1]")


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"students": [{"name": "teacher", "width": 16, "depth": 2}]},
            r"anchors\[1\].options.students\[0\].name: 'name' 'teacher' is reserved",
        ),
        (
            {"students": [{"name": "a", "width": 16, "depth": 2}, {"name": "a", "width": 24, "depth": 2}]},
            r"anchors\[1\].options: students: name 'a' is used twice",
        ),
        (
            {"students": [{"name": "a", "width": 24, "depth": 2, "heads": 5}]},
            r"anchors\[1\].options.students\[0\]: student 'a': heads 5 do not divide width 24",
        ),
        ({"distill": {"step": 3}}, r"anchors\[1\].options.distill: unknown key\(s\) 'step'; did you mean 'steps'"),
        ({"builder": "cnn"}, r"anchors\[1\].options.builder: must be one of 'auto', 'timm_vit', 'vit'"),
    ],
)
def test_bad_pool_options_name_their_spec_path(regs, tmp_path, change, message):
    with pytest.raises(SpecError, match=message):
        _load("learngene:a", _pool(tmp_path, **change), regs)


def test_an_unknown_student_lists_the_pool(regs, tmp_path):
    with pytest.raises(
        UnknownNameError, match=r"no student 'c' in the pool of 'toyvit:32'; .*students: a, b \(or 'teacher'\)"
    ):
        _load("learngene:c", _pool(tmp_path), regs)


def test_generic_students_keep_the_teachers_tokens(regs, tmp_path):
    student = _load("learngene:b", _pool(tmp_path), regs)
    teacher = _load("toyvit:32", {}, regs)
    assert student.name == "b" and student.depth == 4 and student.family == "learngene_vit"
    spec, t_spec = student.graph.spec_at(2), teacher.graph.spec_at(0)
    assert (spec.layout, spec.channels, spec.grid, spec.prefix) == ("tokens", 24, t_spec.grid, t_spec.prefix)
    assert student(torch.zeros(2, 3, 16, 16)).shape == (2, 10)
    assert student.learngene.teacher_positions == (0, 1, 2, 3, 4)
    assert [w.shape for w, _ in student.learngene.to_teacher] == [torch.Size([32, 24])] * 5


def test_timm_teachers_get_timm_students(regs, tmp_path):
    from stitchframe_timm.vit import ViTHead, ViTStem

    teacher_options = {
        "img_size": 16,
        "num_classes": 10,
        "model_kwargs": {"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2},
    }
    pool = _pool(
        tmp_path,
        teacher="timm:vit_tiny_patch16_224",
        teacher_options=teacher_options,
        students=[
            {"name": "t16", "width": 16, "depth": 2, "heads": 1},
            {"name": "t24", "width": 24, "depth": 2, "heads": 2},
        ],
    )
    students = [_load(f"learngene:{n}", pool, regs) for n in ("t16", "t24")]
    for s, width in zip(students, (16, 24)):
        assert s.family == "vision_transformer" and isinstance(s.stem, ViTStem) and isinstance(s.head, ViTHead)
        assert s.stem.patch_embed.patch_size == (4, 4) and s.stem.patch_embed.img_size == (16, 16)
        assert s.graph.spec_at(2).channels == width and s.depth == 2 and s.graph.spec_at(0).prefix == 1
    net = stitchframe.build_snnet(students, space="learngene", layer="learngene", registries=regs).eval()
    assert any(not r.is_anchor for r in net.routes)
    for i in range(len(net.routes)):
        assert net.forward_route(torch.randn(2, 3, 16, 16), i).shape == (2, 10)
    # an exported route rebuilds its timm students (and their teacher) structure-only: no distillation, no cache
    rid = next(i for i, r in enumerate(net.routes) if r.links)
    res = stitchframe.export_route(net, route=rid, dest=tmp_path / "export" / "r.safetensors", registries=regs)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(stitchframe.load_route(res.description, regs)(x), net.forward_route(x, rid))


def test_teachers_that_are_not_vit_style_are_refused(regs, tmp_path):
    pool = _pool(tmp_path, teacher="timm:resnet18", teacher_options={"img_size": 32, "num_classes": 10})
    with pytest.raises(
        SpecError,
        match=r"cannot build students of teacher 'timm:resnet18' \(family 'resnet'.*supported: "
        r"timm_vit: timm vision transformers.*; vit: any teacher with 'tokens' activations",
    ):
        _load("learngene:a", pool, regs)
    with pytest.raises(SpecError, match=r"with builder 'timm_vit'; supported: timm_vit:"):
        _load("learngene:a", _pool(tmp_path, builder="timm_vit"), regs)


def _students(teacher, widths=(16, 24)):
    options = structure_options(PoolOptions, _pool("."), "pool")
    specs = [StudentSpec(name=f"s{w}", width=w, depth=2, heads=2) for w in widths]
    return [
        DistilledStudent(build_student(STUDENT_BUILDERS[1], teacher, s, options, 10, i), teacher)
        for i, s in enumerate(specs)
    ]


def test_distillation_lowers_every_loss_term():
    torch.manual_seed(0)
    teacher = vit_anchor(toy_model(32, 4), "teacher", preprocess=PREPROCESS)
    x, y = digits_tensors()
    students = _students(teacher)
    cfg = DistillOptions(steps=60, batch_size=32, lr=3e-3, block_weight=1.0, refit_batches=0, device="cpu")
    history = stitchframe_learngene.distil(teacher, students, torch.utils.data.TensorDataset(x[:256], y[:256]), cfg)
    for hist in history:
        assert len(hist) == 60
        for term in ("feature", "block", "logit", "reverse"):
            first, last = sum(h[term] for h in hist[:10]) / 10, sum(h[term] for h in hist[-10:]) / 10
            assert last < 0.8 * first, (term, first, last)
    assert not teacher.training and not any(s.training for s in students)


def test_refit_solves_least_squares_for_both_directions():
    torch.manual_seed(0)
    teacher = vit_anchor(toy_model(32, 2), "teacher", preprocess=PREPROCESS)
    (student,) = _students(teacher, (16,))
    x = torch.randn(8, 3, 16, 16)
    refit_transforms(teacher, [student], [x], torch.device("cpu"))
    with torch.no_grad():
        s_acts, _ = run_with_activations(student.anchor, x)
        t_acts, _ = run_with_activations(teacher, x)
    s, t = s_acts[1].reshape(-1, 16).double(), t_acts[1].reshape(-1, 32).double()
    ones = torch.ones(len(s), 1, dtype=torch.float64)
    expected = torch.linalg.lstsq(torch.cat([s, ones], 1), t).solution
    torch.testing.assert_close(student.to_teacher[1].weight.double(), expected[:-1].T, atol=1e-4, rtol=1e-4)
    expected = torch.linalg.lstsq(torch.cat([t, ones], 1), s).solution
    torch.testing.assert_close(student.from_teacher[1].bias.double(), expected[-1], atol=1e-4, rtol=1e-4)


def test_the_cache_key_follows_teacher_student_data_and_budget():
    options = structure_options(PoolOptions, _pool("."), "pool")
    student = options.students[0]
    key = stitchframe_learngene.student_key("f" * 64, student, options, "vit")
    assert key == stitchframe_learngene.student_key("f" * 64, student, options, "vit")
    changed = [
        stitchframe_learngene.student_key("e" * 64, student, options, "vit"),
        stitchframe_learngene.student_key("f" * 64, attrs.evolve(student, width=20), options, "vit"),
        stitchframe_learngene.student_key("f" * 64, student, options, "timm_vit"),
        stitchframe_learngene.student_key(
            "f" * 64, student, attrs.evolve(options, data=attrs.evolve(options.data, name="x")), "vit"
        ),
        stitchframe_learngene.student_key(
            "f" * 64, student, attrs.evolve(options, distill=attrs.evolve(options.distill, steps=3)), "vit"
        ),
    ]
    assert key not in changed and len(set(changed)) == len(changed)
    on_gpu = attrs.evolve(options, distill=attrs.evolve(options.distill, device="cuda"))
    assert stitchframe_learngene.student_key("f" * 64, student, on_gpu, "vit") == key  # the device is not part of it


def test_teacher_fingerprint_sees_every_weight():
    torch.manual_seed(0)
    teacher = vit_anchor(toy_model(32, 2), "teacher", preprocess=PREPROCESS)
    before = stitchframe_learngene.teacher_fingerprint(teacher)
    with torch.no_grad():
        teacher.blocks[1].mlp[0].bias[3] += 1e-3
    assert stitchframe_learngene.teacher_fingerprint(teacher) != before


@pytest.mark.gpu
def test_distillation_runs_on_cuda():
    torch.manual_seed(0)
    teacher = vit_anchor(toy_model(32, 2), "teacher", preprocess=PREPROCESS)
    x, y = digits_tensors()
    students = _students(teacher)
    cfg = DistillOptions(steps=3, batch_size=16, device="cuda", refit_batches=1)
    history = stitchframe_learngene.distil(teacher, students, torch.utils.data.TensorDataset(x[:64], y[:64]), cfg)
    assert all(len(h) == 3 for h in history)
    assert next(students[0].parameters()).device.type == "cpu" and next(teacher.parameters()).device.type == "cpu"


def test_the_example_spec_is_valid(regs):
    from pathlib import Path

    from stitchframe_learngene import LearngeneSpace, LearngeneStitch

    spec = stitchframe.load_spec(Path(__file__).parents[1] / "examples" / "deit_pool.yaml")
    pools = [structure_options(PoolOptions, a.options, f"anchors[{i}].options") for i, a in enumerate(spec.anchors)]
    assert pools[0] == pools[1] == pools[2] and [s.name for s in pools[0].students] == ["small", "medium", "large"]
    assert [a.source for a in spec.anchors] == ["learngene:small", "learngene:medium", "learngene:large"]
    structure_options(LearngeneStitch.Options, spec.stitch.layer_options, "stitch.layer_options")
    structure_options(LearngeneSpace.Options, spec.stitch.space_options, "stitch.space_options")


def test_the_plugin_meets_the_contract():
    """``check_plugin``: documented options, a loader taking ``structure_only`` (stitchframe.AnchorLoader)."""
    from stitchframe.testing import check_plugin

    regs = check_plugin(stitchframe_learngene, name="learngene")
    assert regs.anchor_adapters.origin("learngene") == "learngene"
