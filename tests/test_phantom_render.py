"""The phantom renderer: ground truth matches the pixels, notes follow findings, views differ as
specified, proportions hold, and rendering is deterministic."""

from __future__ import annotations

import hashlib
import multiprocessing as mp

import numpy as np
import pytest

from avn.phantom.findings import notes_from_findings, plan_findings
from avn.phantom.render import radiograph_geometry, render_layers, render_radiograph
from avn.phantom.specs import HipSpec, RadiographSpec, SubjectAnatomy
from avn.vocabulary import STAGES, image_half_of_side, notes_of_stage

SMALL = 0.25


def anatomy(seed: int = 7, **kw) -> SubjectAnatomy:
    values = dict(
        sex="F",
        head_diameter_mm=48.0,
        head_asymmetry_mm=0.6,
        neck_shaft_angle_deg=130.0,
        acetabular_inclination_deg=40.0,
        joint_space_mm=4.0,
        pelvis_width_mm=290.0,
        inter_teardrop_mm=120.0,
        shaft_cortex_mm=5.5,
        soft_tissue=0.4,
        anatomy_seed=seed,
    )
    values.update(kw)
    return SubjectAnatomy(**values)


def spec(
    view="AP", right="II", left="IV", severity=1.0, seed=5, missing=None, hips=None, anat=None, detector="DX"
) -> RadiographSpec:
    if hips is None:
        hips = (HipSpec("right", right, severity, True, 101), HipSpec("left", left, severity, False, 202))
    return RadiographSpec(1, "s-1", view, anat or anatomy(), hips, missing, detector, seed)


# --------------------------------------------------------------------------- pixels and ground truth


def test_full_size_output_dtype_range_and_bits():
    r = render_radiograph(spec(seed=11))
    assert r.pixels.dtype == np.uint16
    assert 12 <= r.bits_stored <= 16
    assert int(r.pixels.max()) <= (1 << r.bits_stored) - 1
    assert 2000 <= r.height <= 3000 and 2000 <= r.width <= 3000
    assert 0.1 <= r.pixel_spacing_mm <= 0.2 + 1e-9
    assert r.marker in ("L", "R")


@pytest.mark.parametrize("view", ["AP", "FL"])
def test_boxes_inside_image_and_on_the_correct_side(view):
    r = render_radiograph(spec(view=view), scale=SMALL)
    assert {h.side for h in r.heads} == {"right", "left"}
    for h in r.heads:
        x, y, w, hgt = h.bbox
        assert 0 <= x and 0 <= y and x + w <= r.width and y + hgt <= r.height
        # FH diameter 43-53 mm (deformed heads a little more or less)
        assert 38 <= w * r.pixel_spacing_mm <= 60
        centre_half = "image-left" if x + w / 2 < r.width / 2 else "image-right"
        assert centre_half == image_half_of_side(h.side)


def test_box_tightly_encloses_the_drawn_head_and_is_bone():
    s = spec()
    scene, grid, layers, out_shape, out_spacing = render_layers(s, SMALL)
    r = render_radiograph(s, SMALL)
    for head in r.heads:
        win, inside = layers.head_masks[head.side]
        rows, cols = np.nonzero(inside)
        # drawn head pixels (working grid) -> output pixel coordinates
        u = (grid.x0 + (cols + win[2] + 0.5) * grid.hx - scene.acquisition.field[0]) / out_spacing
        v = (grid.y0 + (rows + win[0] + 0.5) * grid.hy - scene.acquisition.field[1]) / out_spacing
        x, y, w, h = head.bbox
        tol = 1.0
        assert u.min() >= x - tol and u.max() <= x + w + tol
        assert v.min() >= y - tol and v.max() <= y + h + tol
        # tight: the drawn head reaches every side of the box
        assert u.min() <= x + 2 and u.max() >= x + w - 2 and v.min() <= y + 2 and v.max() >= y + h - 2
        # the boxed region is bone: brighter than the image as a whole, centre brighter than soft tissue
        box = r.pixels[int(y) : int(y + h), int(x) : int(x + w)].astype(float)
        assert box.mean() > np.median(r.pixels)
    # cortex brighter than medulla: across the femoral shaft the edges beat the middle
    fem = scene.hips["left"].femur
    p = (fem.landmarks["shaft_top"] + fem.landmarks["shaft_distal"]) / 2
    row = int((p[1] - scene.acquisition.field[1]) / out_spacing)
    col = int((p[0] - scene.acquisition.field[0]) / out_spacing)
    profile = r.pixels[row - 2 : row + 3, col - 60 : col + 61].mean(axis=0)
    assert profile.max() > profile[55:66].mean()


# --------------------------------------------------------------------------- notes and findings


II_MAP = dict(zip(("sclerosis", "cyst", "crescent"), notes_of_stage("II"), strict=True))


@pytest.mark.parametrize("stage", STAGES)
def test_notes_follow_the_findings_drawn(stage):
    for seed in range(12):
        plan = plan_findings(HipSpec("left", stage, 1.0, True, 1000 + seed))
        notes, drawn = plan.notes, set(plan.findings)
        assert set(notes) <= set(notes_of_stage(stage))
        if stage == "absence":
            assert notes == () and drawn == set()
        elif stage == "II":
            assert notes and set(notes) == {II_MAP[f] for f in drawn if f in II_MAP}
            assert not drawn & {"flattening", "collapse", "deformation"}  # contour intact
        elif stage == "III":
            flat, deform, both = notes_of_stage("III")
            has_flat = bool(drawn & {"flattening", "collapse"})
            expected = both if has_flat and "deformation" in drawn else flat if has_flat else deform
            assert notes == (expected,)
        else:
            acet, jsn = notes_of_stage("IV")
            assert notes and ((acet in notes) == ("acetabular_deformation" in drawn))
            assert (jsn in notes) == ("joint_space_narrowing" in drawn)
            assert "osteophyte" in drawn and "deformation" in drawn
    assert notes_from_findings("II", ("flattening",)) == ()


def test_rendered_heads_report_the_plans_notes():
    r = render_radiograph(spec(right="III", left="II"), scale=SMALL)
    for head in r.heads:
        hip = next(h for h in spec(right="III", left="II").hips if h.side == head.side)
        plan = plan_findings(hip)
        assert head.notes == plan.notes and head.findings == plan.findings and head.stage == hip.stage


def test_lesion_layout_is_shared_by_the_ap_and_fl_radiographs_of_a_hip():
    ap = render_radiograph(spec(view="AP", seed=1), scale=SMALL)
    fl = render_radiograph(spec(view="FL", seed=2), scale=SMALL)
    assert [(h.side, h.findings, h.notes) for h in ap.heads] == [(h.side, h.findings, h.notes) for h in fl.heads]


# --------------------------------------------------------------------------- geometry


def test_frog_leg_abducts_the_shaft_and_foreshortens_the_neck():
    for seed in (1, 2, 3):
        ap = radiograph_geometry(spec(view="AP", seed=seed))
        fl = radiograph_geometry(spec(view="FL", seed=seed + 10))
        for side in ("right", "left"):
            assert abs(ap[side]["shaft_angle_deg"]) < 15
            assert 35 <= fl[side]["shaft_angle_deg"] <= 60
            assert fl[side]["trochanter_distance_mm"] < 0.85 * ap[side]["trochanter_distance_mm"]
            assert fl[side]["neck_length_mm"] < ap[side]["neck_length_mm"]


def test_joint_space_narrowed_in_stage_iv_normal_when_absent():
    healthy_seed = next(
        s for s in range(100) if plan_findings(HipSpec("right", "absence", 1.0, True, s)).joint_space_mm is None
    )
    hips = (HipSpec("right", "absence", 1.0, True, healthy_seed), HipSpec("left", "IV", 1.0, False, 202))
    g = radiograph_geometry(spec(hips=hips))
    assert 3.0 <= g["right"]["joint_space_mm"] <= 5.0
    assert g["left"]["joint_space_mm"] < 2.0


def test_osteoarthritis_is_a_confounder_drawn_on_hips_without_avn():
    plans = [plan_findings(HipSpec("right", "absence", 1.0, True, seed)) for seed in range(200)]
    arthritic = [plan for plan in plans if plan.joint_space_mm is not None]
    assert 0.2 < len(arthritic) / len(plans) < 0.4
    for plan in arthritic:
        assert plan.stage == "absence" and plan.notes == () and plan.osteophytes and plan.acetabulum
        assert 0.7 < plan.joint_space_mm < 3.1
    seed = next(s for s, plan in enumerate(plans) if plan.joint_space_mm is not None and plan.joint_space_mm < 2.0)
    hips = (HipSpec("right", "absence", 1.0, True, seed), HipSpec("left", "II", 1.0, False, 202))
    rendered = render_radiograph(spec(hips=hips), scale=0.25)
    right = next(head for head in rendered.heads if head.side == "right")
    assert right.stage == "absence" and right.notes == ()
    assert radiograph_geometry(spec(hips=hips))["right"]["joint_space_mm"] < 2.5


def test_adult_proportions():
    a = anatomy(acetabular_inclination_deg=38.0, inter_teardrop_mm=118.0)
    g = radiograph_geometry(spec(anat=a, right="absence", left="absence"))
    for side in ("right", "left"):
        assert abs(g[side]["acetabular_inclination_deg"] - 38.0) < 0.5
        assert 43 <= 2 * g[side]["head_radius"] <= 53
    itd = abs(g["left"]["teardrop"][0] - g["right"]["teardrop"][0])
    assert 105 <= itd <= 130


# --------------------------------------------------------------------------- missing heads


def test_prosthesis_side_has_metal_and_no_head():
    s = spec(hips=(HipSpec("left", "III", 1.0, True, 5),), missing="prosthesis")
    r = render_radiograph(s, scale=SMALL)
    assert [h.side for h in r.heads] == ["left"]
    g = radiograph_geometry(s)
    assert g["right"]["head_contour"] is None
    scene, grid, layers, _, _ = render_layers(s, SMALL)
    metal_cols = np.nonzero(layers.metal.max(axis=0) > 0)[0]
    assert metal_cols.size and metal_cols.mean() < grid.shape[1] / 2  # the patient's right: image left
    # the metal ball is recorded (a detector class of its own), on the image's left, bright
    [(x, y, w, h)] = r.prosthetic_heads
    head_w = r.heads[0].bbox[2]
    assert x + w < r.width / 2 and 0.45 < w / head_w < 0.9 and 0.8 < w / h < 1.25  # a 28-mm ball, smaller than a head
    ball = r.pixels[int(y + h * 0.35) : int(y + h * 0.65), int(x + w * 0.35) : int(x + w * 0.65)]
    assert np.median(ball) > np.percentile(r.pixels, 97)  # metal: brighter than nearly everything
    assert render_radiograph(spec(), scale=SMALL).prosthetic_heads == []  # no prosthesis, no box


def test_collimated_field_shows_only_the_annotated_hip():
    s = spec(hips=(HipSpec("right", "II", 1.0, True, 5),), missing="collimated")
    r = render_radiograph(s, scale=SMALL)
    assert [h.side for h in r.heads] == ["right"]
    scene, grid, _, _, _ = render_layers(s, SMALL)
    x0, y0, w, h = scene.acquisition.field
    other = scene.hips["left"].femur
    assert other.head_centre[0] - other.head_radius > x0 + w  # the other head is off the detector
    assert r.marker == "R"


# --------------------------------------------------------------------------- determinism


def _digest(s: RadiographSpec) -> str:
    return hashlib.sha256(render_radiograph(s, scale=SMALL).pixels.tobytes()).hexdigest()


def test_same_spec_same_pixels_in_any_process_and_seed_changes_them():
    s = spec(seed=42)
    first = _digest(s)
    assert first == _digest(s)
    with mp.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_digest, (s,)) == first
    assert _digest(spec(seed=43)) != first


# --------------------------------------------------------------------------- realism: joint, seams, contours


def _bone_path(layers) -> np.ndarray:
    return layers.cortical + layers.cancellous


def _ray(grid, img, centre, angle_deg, radii):
    """Bilinear samples of a working-grid image along a ray from ``centre`` (mm)."""
    a = np.radians(angle_deg)
    u = (centre[0] + radii * np.cos(a) - grid.x0) / grid.hx - 0.5
    v = (centre[1] + radii * np.sin(a) - grid.y0) / grid.hy - 0.5
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    fu, fv = u - u0, v - v0
    return (
        (1 - fu) * (1 - fv) * img[v0, u0]
        + fu * (1 - fv) * img[v0, u0 + 1]
        + (1 - fu) * fv * img[v0 + 1, u0]
        + fu * fv * img[v0 + 1, u0 + 1]
    )


@pytest.mark.parametrize("view", ["AP", "FL"])
def test_head_sits_under_the_sourcil_with_a_lucent_3_to_5_mm_joint_space(view):
    healthy = [s for s in range(100) if plan_findings(HipSpec("right", "absence", 1.0, True, s)).joint_space_mm is None]
    hips = (HipSpec("right", "absence", 1.0, True, healthy[0]), HipSpec("left", "absence", 1.0, False, healthy[1]))
    s = spec(view=view, hips=hips, anat=anatomy(joint_space_mm=4.0))
    scene, grid, layers, _, _ = render_layers(s, 1.0)
    path = _bone_path(layers)
    for h in scene.hips.values():
        assert 3.0 <= h.joint_space_mm <= 5.0
        mid_roof = 0.5 * (h.roof_deg[0] + h.roof_deg[1])
        r_head = float(h.head_rho[int(round(mid_roof)) % 360])
        r_acet = float(h.acet_rho[int(round(mid_roof)) % 360])
        gap = _ray(grid, path, h.femur.head_centre, mid_roof, np.linspace(r_head + 1.0, r_acet - 1.0, 7)).min()
        head = _ray(grid, path, h.femur.head_centre, mid_roof, np.array([r_head - 1.5]))[0]
        roof = _ray(grid, path, h.femur.head_centre, mid_roof, np.array([r_acet + 1.0]))[0]
        # bone on both sides of the joint, a clear lucent band between (the head is deep in the socket)
        assert gap < 0.5 * head and gap < 0.5 * roof


def test_socket_cut_has_no_seam_through_the_head_centre():
    """Hollowing the socket out of a uniform plate of bone is continuous through the head centre.

    Cutting by polar sector (the old '+' artefact) leaves full bone on one side of the centre and
    none on the other; the cavity-chord cut changes smoothly in every direction.
    """
    from avn.phantom.render import _cut_socket

    s = spec(right="absence", left="absence")
    scene, grid, _, _, _ = render_layers(s, 1.0)
    for h in scene.hips.values():
        c, r = h.femur.head_centre, float(h.acet_rho.max()) + 8
        win = grid.window(c[0] - r, c[1] - r, c[0] + r, c[1] + r)
        shape = (win[1] - win[0], win[3] - win[2])
        outer, inner, canc = (np.full(shape, 20.0, np.float32) for _ in range(3))
        _cut_socket(h, grid, win, outer, inner, canc)
        sub = type(grid)(grid.x0 + win[2] * grid.hx, grid.y0 + win[0] * grid.hy, grid.hx, grid.hy, shape)
        theta = np.radians(np.arange(0.0, 360.0, 5.0))
        near = _ray(sub, outer, c, np.degrees(theta), np.full(72, 2.0))
        # near a point a smooth field is linear: mean + first harmonic; a seam leaves a residual
        basis = np.column_stack([np.ones(72), np.cos(theta), np.sin(theta)])
        resid = near - basis @ np.linalg.lstsq(basis, near, rcond=None)[0]
        assert np.abs(resid).max() < 0.5  # mm of bone path, out of 20
        # and the socket is really hollowed under the roof
        mid_roof = 0.5 * (h.roof_deg[0] + h.roof_deg[1])
        assert _ray(sub, outer, c, mid_roof, np.array([0.5 * h.femur.head_radius]))[0] < 8.0  # only the cup walls


def test_chaikin_rounds_corners_keeps_ends_and_closure():
    from avn.phantom.anatomy import chaikin

    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]], float)
    smooth = chaikin(square, 3)
    assert np.allclose(smooth[0], smooth[-1])  # still closed
    assert smooth[:, 0].min() >= 0 and smooth[:, 0].max() <= 10  # inside the control hull
    d = np.diff(smooth, axis=0)
    turn = np.degrees(
        np.abs(np.angle(np.exp(1j * (np.arctan2(d[1:, 1], d[1:, 0]) - np.arctan2(d[:-1, 1], d[:-1, 0])))))
    )
    assert turn.max() < 25  # no facet corners left (the square had 90 deg)
    line = np.array([[0, 0, 1.0], [5, 5, 2.0], [10, 0, 3.0]])
    sm = chaikin(line, 2)
    assert np.allclose(sm[0], line[0]) and np.allclose(sm[-1], line[-1])  # open: ends kept
    assert sm.shape[1] == 3  # extra columns (radii) ride along


# -------------------------------------------------------------------- realism: hip bone over the head, femur outline


def _longest_horizontal_edge(scene, grid, layers, side, thr=0.02) -> float:
    """Longest run (in head radii) of a same-signed sharp vertical step in one row of the noise-free
    bone attenuation, inside the lower half of the head (3 mm inside its outline)."""
    import cv2

    from avn.phantom.render import MU_CANCELLOUS, MU_CORTEX

    path = MU_CORTEX * layers.cortical + MU_CANCELLOUS * layers.cancellous
    h = scene.hips[side]
    c, r = h.femur.head_centre, h.femur.head_radius
    win = grid.window(c[0] - r, c[1] - r, c[0] + r, c[1] + r)
    sub = np.ascontiguousarray(path[win[0] : win[1], win[2] : win[3]])
    xs, ys = grid.coords(win)
    high = sub - cv2.GaussianBlur(sub, (0, 0), 2.0 / grid.spacing)  # sharp structure only
    gy = np.zeros_like(high)
    gy[1:-1] = (high[2:] - high[:-2]) / (2 * grid.hy)
    inside = (np.hypot(xs - c[0], ys - c[1]) < r - 3.0) & (ys > c[1])
    best = 0
    for sign in (1, -1):
        for row in (sign * gy > thr) & inside:
            d = np.diff(np.concatenate([[0], row.astype(np.int8), [0]]))
            starts, ends = np.nonzero(d == 1)[0], np.nonzero(d == -1)[0]
            if len(starts):
                best = max(best, int((ends - starts).max()))
    return best * grid.hx / r


@pytest.mark.parametrize("view", ["AP", "FL"])
def test_no_long_straight_edge_across_the_lower_head(view, monkeypatch):
    """The pubic/ischial tubes end in the socket: no straight edge may cross the lower head."""
    from avn.phantom import render

    s = spec(view=view, right="absence", left="absence")
    scene, grid, layers, _, _ = render_layers(s, 1.0)
    for side in ("right", "left"):
        assert _longest_horizontal_edge(scene, grid, layers, side) < 0.35
    # the check is able to see such an edge: with the socket cut fading out below the head centre
    # (as it used to) the superior ramus' edge runs across the head
    monkeypatch.setattr(render, "SOCKET_CUT_FADE", (-0.45, 0.7))
    scene, grid, layers, _, _ = render_layers(s, 1.0)
    assert max(_longest_horizontal_edge(scene, grid, layers, side) for side in ("right", "left")) > 0.5


def _distance_to_shaft_axis(f, p) -> float:
    a, b = f.landmarks["shaft_top"], f.landmarks["shaft_distal"]
    d = (b - a) / np.linalg.norm(b - a)
    v = p - a
    return float(abs(v[0] * d[1] - v[1] * d[0]))


@pytest.mark.parametrize("view", ["AP", "FL"])
def test_lesser_trochanter_is_attached_to_the_femur(view):
    """Bone all the way from the lesser trochanter's tip to the shaft axis: a prominence, not an island."""
    s = spec(view=view, right="absence", left="absence")
    scene, grid, layers, _, _ = render_layers(s, 1.0)
    path = _bone_path(layers)
    for h in scene.hips.values():
        f = h.femur
        tip = f.landmarks["lesser_trochanter"]
        a, b = f.landmarks["shaft_top"], f.landmarks["shaft_distal"]
        d = (b - a) / np.linalg.norm(b - a)
        foot = a + d * float((tip - a) @ d)  # the shaft axis at the trochanter's level
        t = np.linspace(0.0, 1.0, 40)[:, None]
        pts = tip * (1 - t) + foot * t
        samples = np.array([_ray(grid, path, p, 0.0, np.array([0.0]))[0] for p in pts])
        assert samples.min() > 3.0  # mm of bone along the whole way: no soft-tissue gap
        # it stands out medially beyond the shaft, and more so in the frog-leg view
        assert _distance_to_shaft_axis(f, tip) > 0.3 * f.head_radius * 2


def test_lesser_trochanter_more_prominent_in_frog_leg():
    for seed in (1, 2):
        ap = render_layers(spec(view="AP", seed=seed))[0]
        fl = render_layers(spec(view="FL", seed=seed + 10))[0]
        for side in ("right", "left"):
            f_ap, f_fl = ap.hips[side].femur, fl.hips[side].femur
            assert _distance_to_shaft_axis(f_fl, f_fl.landmarks["lesser_trochanter"]) > _distance_to_shaft_axis(
                f_ap, f_ap.landmarks["lesser_trochanter"]
            )


def test_greater_trochanter_tip_near_head_centre_level():
    g = radiograph_geometry(spec(view="AP", right="absence", left="absence"))
    for side in ("right", "left"):
        c, gt = g[side]["head_centre"], g[side]["landmarks"]["greater_trochanter"]
        r = g[side]["head_radius"]
        assert abs(gt[1] - c[1]) < 0.5 * r  # the tip at about the level of the head centre
        assert abs(gt[0]) > abs(c[0])  # lateral to the head


def test_vertebral_body_is_a_waisted_cylinder_with_bright_walls_and_thin_endplates():
    """AP projection of a lumbar body: dome-shaped chord across a row (not a block), the cortical
    shell brightest at the lateral walls, a narrower waist than the endplates, endplates as thin
    dense lines rather than bands."""
    from avn.phantom import anatomy as anat_mod
    from avn.phantom.acquisition import Grid
    from avn.phantom.render import _body_into

    grid = Grid(-40.0, -10.0, 0.2, 0.2, (250, 400))  # x -40..40, y -10..40 mm
    body = anat_mod.Body(np.array([0.0, 0.0]), np.array([0.0, 28.0]), 25.0, 0.66, 1.3, 0.12, waist=0.92)
    win = (0, 250, 0, 400)
    outer, inner, canc = (np.zeros(grid.shape, np.float32) for _ in range(3))
    _body_into(body, grid, win, outer, inner, canc)
    row = lambda y: int(round((y - grid.y0) / grid.hy - 0.5))  # noqa: E731
    col = lambda x: int(round((x - grid.x0) / grid.hx - 0.5))  # noqa: E731
    mid = row(14.0)
    o = outer[mid]
    assert o[col(0.0)] > 1.5 * o[col(20.0)] > 0  # thickness falls off towards the sides
    cort = outer - inner
    wall = cort[mid, col(-24.0) : col(-20.0)].max()
    assert wall > 4.0 * cort[mid, col(0.0)] + 1.0  # tangential cortex: bright lateral walls
    width = lambda r: np.count_nonzero(outer[r] > 0)  # noqa: E731
    assert width(mid) < width(row(2.0)) - 5  # concave waist
    # the endplate: dense but thin (a line of ~1-2 mm, not a band)
    col_c = cort[:, col(0.0)]
    dense = np.nonzero(col_c > 0.5 * col_c[row(-1.0) : row(4.0)].max())[0]
    assert 1 <= len(dense[dense < row(10.0)]) * grid.hy <= 2.0


def test_skin_folds_add_tissue_on_one_side_of_a_sharp_edge_and_come_with_habitus():
    from avn.phantom.acquisition import Grid
    from avn.phantom.variation import SkinFold, choose_variation, skin_fold_attenuation

    grid = Grid(-100.0, -100.0, 1.0, 1.0, (200, 200))  # 1 mm pixels over ±100 mm
    # an edge along y = 0 (row 100) drawn left to right: side +1 is its left-hand normal, +y
    fold = SkinFold(((-100.0, 0.0), (100.0, 0.0)), depth_mm=20.0, width_mm=40.0, side=1)
    column = skin_fold_attenuation(grid, (fold,), mu=0.017)[:, 100]
    on_fold, off_fold = column[101:140], column[60:99]
    assert on_fold[0] == pytest.approx(0.017 * 20.0, rel=0.1)  # full depth at the sharp edge
    assert np.all(np.diff(on_fold) <= 1e-6) and on_fold[-1] < 0.1 * on_fold[0]  # fading over 40 mm
    assert off_fold.max() == 0.0 and column[150:].max() == 0.0  # one side only, and no further

    def share_with_folds(habitus: float) -> float:
        field, heads, midline = (-200.0, -150.0, 400.0, 300.0), [], (0.0, 0.0)
        drawn = [choose_variation(np.random.default_rng(s), field, habitus, heads, midline) for s in range(300)]
        return float(np.mean([len(variation.skin_folds) > 0 for variation in drawn]))

    assert 0.03 < share_with_folds(0.0) < share_with_folds(1.0) < 0.7
