"""Render one ``RadiographSpec`` into pixels and the ground truth it drew.

Pipeline (all randomness from numpy Generators seeded by the spec, so pixels are reproducible):

1. ``build_scene``: pose (spec.seed), bones in mm (anatomy, anatomy_seed), lesion plans per hip
   (findings, lesion_seed), head and socket contours, field of view and detector settings.
2. ``rasterise``: on a working grid of ~0.36 mm the bones become path-length maps — cortical shell
   and cancellous bone — by projected chords of tubes, slabs and the (possibly deformed) heads.
   Primitives of one bone merge by maximum, different bones overlap additively, so the head and the
   acetabulum overlap at the joint margins and the greater trochanter overlaps the neck.
   Cancellous bone is modulated by band-pass trabecular texture, with oriented streaks in the
   principal compressive and tensile groups of the femoral head and neck.
3. ``acquisition.detect``: exp/log detector physics, processing, noise and blur at output size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from avn.phantom import acquisition as acq_mod
from avn.phantom import anatomy, findings
from avn.phantom.acquisition import Acquisition, Grid
from avn.phantom.specs import HipSpec, RadiographSpec, RenderedHead, RenderedRadiograph
from avn.phantom.variation import Variation, choose_variation, draw_foreign_bodies, skin_fold_attenuation

WORK_SPACING_MM = 0.36
MU_CORTEX = 0.045  # per mm of cortical bone beyond water
MU_CANCELLOUS = 0.012  # per mm of reference cancellous bone beyond water
MU_CEMENT = 0.03
MU_METAL = 0.6
HEAD_CORTEX_MM = 0.9  # subchondral bone plate
FOVEA_DIR = np.array([-0.93, 0.30, -0.15]) / np.linalg.norm([-0.93, 0.30, -0.15])


# --------------------------------------------------------------------------- scene


@dataclass
class HipScene:
    """One side: femur, its plan (if annotated), drawn head and socket contours."""

    side: str
    femur: anatomy.FemurModel
    hip: HipSpec | None
    plan: findings.LesionPlan | None
    head_rho: np.ndarray | None  # per degree around the head centre; None when no native head
    acet_rho: np.ndarray  # socket surface per degree around the same centre
    roof_deg: tuple[float, float]  # image polar angles spanned by the roof (sourcil)
    joint_space_mm: float | None

    def head_contour(self) -> np.ndarray:
        theta = np.radians(np.arange(findings.PROFILE_SAMPLES))
        c = self.femur.head_centre
        return np.column_stack([c[0] + self.head_rho * np.cos(theta), c[1] + self.head_rho * np.sin(theta)])


@dataclass
class Scene:
    spec: RadiographSpec
    pose: anatomy.Pose
    geometry: anatomy.PelvisGeometry
    hips: dict[str, HipScene]
    acquisition: Acquisition
    soft: dict = field(default_factory=dict)


def build_scene(spec: RadiographSpec) -> Scene:
    """Everything about the radiograph in mm, before any pixel is drawn."""
    pose = anatomy.sample_pose(spec.view, np.random.default_rng([spec.seed, 1]))
    annotated = {h.side: h for h in spec.hips}
    prosthesis_side = None
    if spec.missing_reason == "prosthesis":
        prosthesis_side = next((s for s in ("right", "left") if s not in annotated), None)
    geo = anatomy.build_geometry(spec, pose, prosthesis_side)

    hips: dict[str, HipScene] = {}
    for side in ("right", "left"):
        fem = geo.femurs[side]
        lm = geo.hemipelvis[side]
        hip = annotated.get(side)
        plan = findings.plan_findings(hip) if hip is not None else None
        rho = None
        if side != prosthesis_side:
            rho = findings.head_profile(plan, fem.head_radius, fem.head_frame, FOVEA_DIR)
        m = lm["measures"]
        base_rho = rho if rho is not None else np.full(findings.PROFILE_SAMPLES, fem.head_radius)
        acet = findings.acetabular_profile(plan, base_rho, m.acetabular_radius, spec.anatomy.joint_space_mm)
        roof = _roof_polar_degrees(side, m.rim_angle_deg, pose.roll_deg)
        js = findings.joint_space(rho, acet, roof) if rho is not None else None
        hips[side] = HipScene(side, fem, hip, plan, rho, acet, roof, js)

    anat = spec.anatomy
    m_left = geo.hemipelvis["left"]["measures"]
    keep = [tuple(_bbox_mm(hips[s].head_contour())) for s in annotated if hips[s].head_rho is not None]
    focus = None
    if spec.missing_reason == "collimated" or (spec.missing_reason is None and len(annotated) == 1):
        side = next(iter(annotated))
        focus = (float(hips[side].femur.head_centre[0]), anatomy.SIDE_SIGN[side])
    marker_side = next(iter(annotated)) if focus is not None else None
    acq = acq_mod.choose_acquisition(
        spec.view,
        spec.detector,
        np.random.default_rng([spec.seed, 2]),
        anat.pelvis_width_mm,
        m_left.crest_height,
        focus,
        keep,
        marker_side,
    )
    return Scene(spec, pose, geo, hips, acq)


def _roof_polar_degrees(side: str, rim_angle: float, roll: float) -> tuple[float, float]:
    """Image polar angles (deg, atan2(dy, dx)) of the roof from its medial end to the lateral rim."""
    medial, lateral = -35.0, rim_angle  # measured from 'up' towards lateral
    if anatomy.SIDE_SIGN[side] > 0:
        ends = (medial - 90.0, lateral - 90.0)
    else:
        ends = (-90.0 - medial, -90.0 - lateral)
    return ends[0] + roll, ends[1] + roll


def _bbox_mm(pts: np.ndarray) -> tuple[float, float, float, float]:
    return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())


def radiograph_geometry(spec: RadiographSpec) -> dict[str, dict]:
    """Projected landmarks per side (mm) for checks without image analysis."""
    scene = build_scene(spec)
    out = {}
    for side, h in scene.hips.items():
        f = h.femur
        out[side] = {
            "head_centre": f.head_centre.copy(),
            "head_radius": f.head_radius,
            "head_contour": h.head_contour() if h.head_rho is not None else None,
            "shaft_angle_deg": f.shaft_angle_deg,
            "neck_length_mm": f.neck_length_mm,
            "trochanter_distance_mm": f.trochanter_distance_mm,
            "joint_space_mm": h.joint_space_mm,
            "acetabular_inclination_deg": anatomy.acetabular_inclination(scene.geometry.hemipelvis[side]["measures"]),
            "teardrop": scene.geometry.hemipelvis[side]["teardrop"].copy(),
            "landmarks": {k: v.copy() for k, v in f.landmarks.items()},
        }
    return out


# --------------------------------------------------------------------------- rasterisation


@dataclass
class Layers:
    """Path-length maps (mm) on the working grid."""

    cortical: np.ndarray
    cancellous: np.ndarray
    cement: np.ndarray
    metal: np.ndarray
    head_masks: dict[str, np.ndarray] = field(default_factory=dict)


def _box_of_points(pts: np.ndarray, pad: float) -> tuple[float, float, float, float]:
    return pts[:, 0].min() - pad, pts[:, 1].min() - pad, pts[:, 0].max() + pad, pts[:, 1].max() + pad


def _sub(win, outer_win):
    """``win`` expressed inside ``outer_win`` as slices (both are r0, r1, c0, c1)."""
    return slice(win[0] - outer_win[0], win[1] - outer_win[0]), slice(win[2] - outer_win[2], win[3] - outer_win[2])


def _intersect(a, b):
    r0, r1, c0, c1 = max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3])
    return (r0, r1, c0, c1) if r1 > r0 and c1 > c0 else None


SMOOTH_UNION_MM = 5.0  # blend width (path mm) where two primitives of one bone meet


def _smooth_max_into(dst: np.ndarray, src: np.ndarray, k: float = SMOOTH_UNION_MM) -> None:
    """dst <- smooth maximum of (dst, src): a fillet instead of a crease where two primitives meet.

    A hard maximum of two chord maps has a kink along the line where they cross; edge enhancement
    turns every such kink into a visible seam. The polynomial smooth maximum
    max(a, b) + k/4 * h^2, h = max(1 - |a - b| / k, 0) is C1 and equals max(a, b) away from the
    crossing. Where one map is zero (outside its primitive) nothing is added.
    """
    h = np.abs(dst - src)
    h *= np.float32(-1.0 / k)
    h += np.float32(1.0)
    np.maximum(h, 0.0, out=h)
    h *= h
    h *= np.float32(0.25 * k)
    h *= (src > 0) & (dst > 0)
    np.maximum(dst, src, out=dst)
    dst += h


def _profile_at(profile: np.ndarray, deg: np.ndarray) -> np.ndarray:
    """A per-degree contour profile at fractional image polar angles (linear, periodic)."""
    i0 = np.floor(deg)
    frac = (deg - i0).astype(np.float32)
    i0 = i0.astype(np.int32) % findings.PROFILE_SAMPLES
    prof = profile.astype(np.float32)
    return prof[i0] * (1 - frac) + prof[(i0 + 1) % findings.PROFILE_SAMPLES] * frac


def _tube_into(tube: anatomy.Tube, grid: Grid, win, outer, inner, canc, additive_scale: float = 0.0):
    """Chords of one tube into (outer, inner, canc) of window ``win``.

    Segments of the tube merge by a hard maximum (they continue one another); the whole tube then
    joins the bone's other primitives by a smooth maximum, so junctions are filleted, not creased.
    With ``additive_scale`` > 0 the tube is a cortical line: its chord (max over its segments, no
    double counting at the joints) is written into ``canc`` scaled by ``additive_scale``.
    """
    pts, radii = tube.points, tube.radii
    tw = grid.window(*_box_of_points(pts, float(radii.max()) + grid.spacing))
    tw = tw and _intersect(tw, win)
    if tw is None:
        return
    th, tw_ = tw[1] - tw[0], tw[3] - tw[2]
    t_out = np.zeros((th, tw_), np.float32)
    t_in = None if additive_scale else np.zeros((th, tw_), np.float32)
    t_canc = None if additive_scale else np.zeros((th, tw_), np.float32)
    stretch = tube.stretch if tube.stretch is not None else np.ones(len(pts) - 1)
    cortex = np.broadcast_to(np.asarray(tube.cortex, np.float32), (len(pts),))
    density = np.broadcast_to(np.asarray(tube.density, np.float32), (len(pts),))
    for i in range(len(pts) - 1):
        a, b = pts[i], pts[i + 1]
        ra, rb = float(radii[i]), float(radii[i + 1])
        seg_win = grid.window(*_box_of_points(np.array([a, b]), max(ra, rb) + grid.spacing))
        seg_win = seg_win and _intersect(seg_win, tw)
        if seg_win is None:
            continue
        xs, ys = grid.coords(seg_win)
        v = (b - a).astype(np.float32)
        l2 = float(v @ v) or 1e-6
        t = np.clip(((xs - a[0]) * v[0] + (ys - a[1]) * v[1]) / l2, 0.0, 1.0)
        dx = xs - (a[0] + t * v[0])
        dy = ys - (a[1] + t * v[1])
        d2 = dx * dx + dy * dy
        r = ra + t * (rb - ra)
        k = 2.0 * float(stretch[i]) * tube.flat
        o = k * np.sqrt(np.maximum(r * r - d2, 0.0))
        rs, cs = _sub(seg_win, tw)
        np.maximum(t_out[rs, cs], o, out=t_out[rs, cs])
        if additive_scale:
            continue
        ri = np.maximum(r - (cortex[i] + t * (cortex[i + 1] - cortex[i])), 0.0)
        inn = k * np.sqrt(np.maximum(ri * ri - d2, 0.0))
        np.maximum(t_in[rs, cs], inn, out=t_in[rs, cs])
        dens = density[i] + t * (density[i + 1] - density[i]) if density[i] != density[i + 1] else density[i]
        np.maximum(t_canc[rs, cs], inn * dens, out=t_canc[rs, cs])
    rs, cs = _sub(tw, win)
    if additive_scale:
        np.maximum(canc[rs, cs], t_out * np.float32(additive_scale), out=canc[rs, cs])
        return
    _smooth_max_into(outer[rs, cs], t_out)
    _smooth_max_into(inner[rs, cs], t_in)
    _smooth_max_into(canc[rs, cs], t_canc, SMOOTH_UNION_MM * 0.6)


def _slab_into(slab: anatomy.Slab, grid: Grid, win, outer, inner, canc):
    """A flat bone: distance from its outline gives a rounded rim and a plate of constant thickness.

    ``slab.fossa`` thins the plate away from its rim (the translucent iliac fossa inside the thick
    crest and columns); the thinning ramps in over ``slab.rim_mm`` so no second outline appears.
    """
    sw = grid.window(*_box_of_points(slab.polygon, 2 * grid.spacing))
    sw = sw and _intersect(sw, win)
    if sw is None:
        return
    pad = 8
    h, w = sw[1] - sw[0], sw[3] - sw[2]
    mask = np.zeros((h + 2 * pad, w + 2 * pad), np.uint8)
    uv = grid.to_px(slab.polygon) - [sw[2] - pad, sw[0] - pad]
    cv2.fillPoly(mask, [np.round(uv * 16 - 8).astype(np.int32)], 255, lineType=cv2.LINE_8, shift=4)
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 5)[pad : pad + h, pad : pad + w]
    d = np.maximum(dist - 0.5, 0.0) * grid.spacing
    t = slab.half_thickness
    dc = np.minimum(d, t)
    o = (2.0 * slab.flat) * np.sqrt(dc * (2 * t - dc))
    ti = max(t - slab.cortex, 0.1)
    di = np.clip(d - slab.cortex, 0.0, ti)
    inn = (2.0 * slab.flat) * np.sqrt(di * (2 * ti - di))
    if slab.fossa > 0:
        ramp = np.clip((d - slab.rim_mm) / slab.rim_mm, 0.0, 1.0)
        ramp = ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep
        if slab.fossa_shape is not None:
            # an oval fossa fading smoothly (super-Gaussian): its edge does not repeat the outline
            fx, fy, fa, fb = slab.fossa_shape
            xs, ys = grid.coords(sw)
            q = ((xs - fx) / fa) ** 2 + ((ys - fy) / fb) ** 2
            ramp = ramp * np.exp(-q * q)
        thin = 1.0 - slab.fossa * ramp
        o *= thin
        inn *= thin
    rs, cs = _sub(sw, win)
    _smooth_max_into(outer[rs, cs], o)
    _smooth_max_into(inner[rs, cs], inn)
    _smooth_max_into(canc[rs, cs], inn * np.float32(slab.density), SMOOTH_UNION_MM * 0.6)


def _body_into(body: anatomy.Body, grid: Grid, win, outer, inner, canc):
    """A vertebral body: chords of a waisted elliptic cylinder with flat, slightly rounded ends.

    Across a row the chord follows 2 * depth * sqrt(R^2 - x^2) (a dome, not a block); the cortical
    shell, crossed tangentially at the sides, draws the bright lateral walls; the endplates are
    ``endplate`` mm of cortical bone across the whole section, i.e. thin dense lines.
    """
    ax = body.bottom - body.top
    length = float(np.linalg.norm(ax)) or 1.0
    a = ax / length
    bw = grid.window(*_box_of_points(np.array([body.top, body.bottom]), body.half_width + 1.0))
    bw = bw and _intersect(bw, win)
    if bw is None:
        return
    xs, ys = grid.coords(bw)
    rx, ry = xs - float(body.top[0]), ys - float(body.top[1])
    s = rx * a[0] + ry * a[1]  # mm along the axis from the superior endplate
    x = rx * -a[1] + ry * a[0]
    u = np.clip(s / length, 0.0, 1.0)
    waist = 1.0 - (1.0 - body.waist) * (4.0 * u * (1.0 - u)) ** 1.5
    r = body.half_width * waist
    end = np.minimum(s, length - s)  # mm inside the body from the nearer endplate
    k = np.float32(2.0 * body.depth_ratio)
    # corners rounded over ~1.5 mm: the endplate ring (apophysis) is a little rounded
    rr = r - np.maximum(1.5 - end, 0.0) ** 2 / 1.5
    # the endplates are slightly concave and seen a little obliquely: the dense plate is smeared
    # over ~1.2 mm of height instead of a one-pixel edge
    ramp = np.float32(1.0 / 1.2)
    o = k * np.sqrt(np.maximum(rr * rr - x * x, 0.0)) * np.clip(end * ramp + 0.3, 0.0, 1.0)
    ri = r - body.cortex
    inn = k * np.sqrt(np.maximum(ri * ri - x * x, 0.0)) * np.clip((end - body.endplate) * ramp + 0.3, 0.0, 1.0)
    o = o.astype(np.float32)
    inn = inn.astype(np.float32)
    rs, cs = _sub(bw, win)
    _smooth_max_into(outer[rs, cs], o)
    _smooth_max_into(inner[rs, cs], inn)
    _smooth_max_into(canc[rs, cs], inn * np.float32(body.density), SMOOTH_UNION_MM * 0.6)


def _polar(grid: Grid, win, centre) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) and fractional image polar angle (deg, [0, 360)) of each pixel about ``centre``."""
    xs, ys = grid.coords(win)
    dx, dy = xs - centre[0], ys - centre[1]
    dist = np.sqrt(dx * dx + dy * dy)
    deg = np.degrees(np.arctan2(dy, dx)) % findings.PROFILE_SAMPLES
    return dist, deg


HEAD_DENSITY = 0.42  # cancellous density of the head: a thick sphere, but no brighter than the neck


def _head_into(h: HipScene, grid: Grid, win, outer, inner, canc):
    """The femoral head: chords of a sphere whose radius follows the drawn contour.

    Its cancellous density is kept low so that, through ~50 mm of bone, the head reads about as
    dense as the neck and trochanters; the thin subchondral plate gives the crisp outline and the
    principal compressive group (``FemurModel.groups``) the denser band towards the dome.
    """
    c = h.femur.head_centre
    rmax = float(h.head_rho.max())
    hw = grid.window(c[0] - rmax - 1, c[1] - rmax - 1, c[0] + rmax + 1, c[1] + rmax + 1)
    hw = hw and _intersect(hw, win)
    if hw is None:
        return None
    dist, deg = _polar(grid, hw, c)
    rho = _profile_at(h.head_rho, deg)
    o = 2.0 * np.sqrt(np.maximum(rho * rho - dist * dist, 0.0))
    ri = rho - HEAD_CORTEX_MM
    inn = 2.0 * np.sqrt(np.maximum(ri * ri - dist * dist, 0.0))
    rs, cs = _sub(hw, win)
    _smooth_max_into(outer[rs, cs], o)
    _smooth_max_into(inner[rs, cs], inn)
    _smooth_max_into(canc[rs, cs], inn * np.float32(HEAD_DENSITY), SMOOTH_UNION_MM * 0.6)
    return hw, (dist < rho)


def _bone_window(bone: anatomy.Bone, grid: Grid, extra: list[np.ndarray] = ()):
    boxes = [_box_of_points(t.points, float(t.radii.max())) for t in bone.tubes + bone.lines]
    boxes += [_box_of_points(s.polygon, 1.0) for s in bone.slabs]
    boxes += [_box_of_points(np.array([b.top, b.bottom]), b.half_width + 1.0) for b in bone.bodies]
    boxes += [_box_of_points(p, 1.0) for p in extra]
    if not boxes:
        return None
    b = np.array(boxes)
    return grid.window(b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max())


def rasterise(scene: Scene, grid: Grid, rng: np.random.Generator) -> Layers:
    shape = grid.shape
    layers = Layers(*(np.zeros(shape, np.float32) for _ in range(4)))
    femur_of = {f"femur_{s}": h for s, h in scene.hips.items()}
    hip_of = {f"hip_{s}": h for s, h in scene.hips.items()}
    for bone in scene.geometry.bones:
        hip = femur_of.get(bone.name)
        socket = hip_of.get(bone.name)
        extra = []
        if hip is not None and hip.head_rho is not None:
            extra.append(hip.head_contour())
        win = _bone_window(bone, grid, extra)
        if win is None:
            continue
        h, w = win[1] - win[0], win[3] - win[2]
        outer, inner, canc = (np.zeros((h, w), np.float32) for _ in range(3))
        for tube in bone.tubes:
            _tube_into(tube, grid, win, outer, inner, canc)
        for body in bone.bodies:
            _body_into(body, grid, win, outer, inner, canc)
        for slab in bone.slabs:
            if not slab.keep_in_socket:
                _slab_into(slab, grid, win, outer, inner, canc)
        if socket is not None:
            _cut_socket(socket, grid, win, outer, inner, canc)
            for slab in bone.slabs:
                if slab.keep_in_socket:
                    _slab_into(slab, grid, win, outer, inner, canc)
        head_hit = None
        if hip is not None and hip.head_rho is not None:
            head_hit = _head_into(hip, grid, win, outer, inner, canc)
        for hole in bone.holes:
            _hole_into(hole, grid, win, canc, outer)
        rs, cs = slice(win[0], win[1]), slice(win[2], win[3])
        if bone.material == "metal":
            layers.metal[rs, cs] += outer
            continue
        if bone.material == "cement":
            layers.cement[rs, cs] += outer
            continue
        layers.cortical[rs, cs] += np.maximum(outer - inner, 0.0)
        layers.cancellous[rs, cs] += canc
        _lines_into(bone.lines, grid, win, layers)
        if bone.groups:
            _trabecular_groups(bone.groups, grid, layers, rng)
        if hip is not None:
            _trabecular_groups(hip.femur.groups, grid, layers, rng)
            if head_hit is not None:
                _lesions_into(hip, grid, head_hit, layers)
        if socket is not None:
            _sourcil_into(socket, grid, layers)
    _osteophytes_into(scene, grid, layers)
    np.maximum(layers.cancellous, 0.0, out=layers.cancellous)
    return layers


ACETABULAR_WALL_MM = 3.5  # thickness of the cup (anterior/posterior walls) around the socket
# where the socket cut fades in along the socket axis (fraction of its radius, start and width):
# from just above the notch, so no tube that ends at the acetabulum shows an edge across the head
SOCKET_CUT_FADE = (-0.95, 0.35)


def _chord(radius: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Length of the chord of a sphere of ``radius`` at ``dist`` from its centre (0 outside)."""
    return 2.0 * np.sqrt(np.maximum(radius * radius - dist * dist, 0.0))


def _cut_socket(h: HipScene, grid: Grid, win, outer, inner, canc):
    """Hollow the acetabular socket out of the hip bone: subtract the cavity's chord.

    The socket is a sphere of radius ``acet_rho`` about the head centre; along each ray the hip
    bone loses the length of that sphere it crosses (never below zero). This is smooth in every
    direction: no sector edges running through the head centre. Where the hip bone is thin (the
    roof, the medial fossa) the cavity empties it, so the joint space shows as a lucent band under
    the sourcil; the thick columns and walls in front of and behind the head keep some bone and
    overlap the head. The cut covers the whole socket down to the acetabular notch, so the pubic
    and ischial tubes that end at the acetabulum leave no straight edge across the lower head; only
    the cup's walls (a spherical shell) fade out towards the notch, where the socket is open.
    """
    c = h.femur.head_centre
    rmax = float(h.acet_rho.max()) + 1
    ext = rmax + ACETABULAR_WALL_MM
    sw = grid.window(c[0] - ext, c[1] - ext, c[0] + ext, c[1] + ext)
    sw = sw and _intersect(sw, win)
    if sw is None:
        return
    dist, deg = _polar(grid, sw, c)
    rho = _profile_at(h.acet_rho, deg)
    cavity = 2.0 * np.sqrt(np.maximum(rho * rho - dist * dist, 0.0))
    # weight along the socket axis (roof middle direction): 1 over the roof, 0 past the notch
    axis = math.radians(0.5 * (h.roof_deg[0] + h.roof_deg[1]))
    xs, ys = grid.coords(sw)
    along = ((xs - c[0]) * math.cos(axis) + (ys - c[1]) * math.sin(axis)) / max(rmax, 1.0)
    w = np.clip((along - SOCKET_CUT_FADE[0]) / SOCKET_CUT_FADE[1], 0.0, 1.0)
    cavity *= w * w * (3.0 - 2.0 * w)
    # the cup's walls stop at the acetabular notch (inferiorly the socket is open)
    w = np.clip((along + 0.45) / 0.7, 0.0, 1.0)
    weight = w * w * (3.0 - 2.0 * w)
    rs, cs = _sub(sw, win)
    o, i = outer[rs, cs], inner[rs, cs]
    keep = np.maximum(i - cavity, 0.0) / np.maximum(i, 1e-3)
    np.maximum(o - cavity, 0.0, out=o)
    i *= keep
    canc[rs, cs] *= keep
    # the cup's wall: a spherical shell around the socket, seen through the head (the acetabulum
    # overlaps the head); its tangent over the roof adds to the sourcil
    # outside the socket the hip bone is already there: fade the shell's outer tangent away so it
    # does not draw a second ring
    outside = np.clip((dist - rho) / ACETABULAR_WALL_MM, 0.0, 1.0)
    weight *= np.float32(0.7) * (1.0 - outside) ** 2
    shell_out = _chord(rho + ACETABULAR_WALL_MM, dist) - _chord(rho, dist)
    shell_in = _chord(rho + ACETABULAR_WALL_MM - 0.8, dist) - _chord(rho + 0.8, dist)
    o += shell_out * weight
    i += shell_in * weight
    canc[rs, cs] += shell_in * (weight * np.float32(0.8))


def _hole_into(hole: anatomy.Hole, grid: Grid, win, canc, outer):
    c, r = hole.centre, hole.radius
    hw = grid.window(c[0] - r - 2, c[1] - r - 2, c[0] + r + 2, c[1] + r + 2)
    hw = hw and _intersect(hw, win)
    if hw is None:
        return
    dist, _ = _polar(grid, hw, c)
    chord = 2.0 * np.sqrt(np.maximum(r * r - dist * dist, 0.0))
    rs, cs = _sub(hw, win)
    canc[rs, cs] = np.maximum(canc[rs, cs] - 0.4 * chord, 0.0)
    if hole.rim:
        rim = np.exp(-(((dist - r) / 0.6) ** 2)) * (hole.rim * 2.0)
        outer[rs, cs] += rim.astype(np.float32)


def _lines_into(lines: list[anatomy.Tube], grid: Grid, win, layers: Layers):
    for line in lines:
        lw = _bone_window(anatomy.Bone("line", lines=[line]), grid)
        if lw is None:
            continue
        h, w = lw[1] - lw[0], lw[3] - lw[2]
        acc = np.zeros((h, w), np.float32)
        _tube_into(line, grid, lw, None, None, acc, additive_scale=float(np.max(line.density)))
        layers.cortical[lw[0] : lw[1], lw[2] : lw[3]] += acc


def _trabecular_groups(groups: list[anatomy.Tube], grid: Grid, layers: Layers, rng: np.random.Generator):
    """Principal compressive/tensile trabeculae: denser bands with streaks along their course."""
    for g in groups:
        gw = _bone_window(anatomy.Bone("g", tubes=[g]), grid)
        if gw is None:
            continue
        h, w = gw[1] - gw[0], gw[3] - gw[2]
        acc = np.zeros((h, w), np.float32)
        _tube_into(g, grid, gw, np.zeros_like(acc), np.zeros_like(acc), acc)
        axis = g.points[-1] - g.points[0]
        streak = _streaks((h, w), math.degrees(math.atan2(axis[1], axis[0])), grid.spacing, rng)
        layers.cancellous[gw[0] : gw[1], gw[2] : gw[3]] += acc * streak


def _streaks(shape, angle_deg, spacing, rng) -> np.ndarray:
    """Oriented trabecular streaks (mean ~1) along ``angle_deg`` (image polar angle)."""
    h, w = shape
    s = int(math.ceil(math.hypot(h, w))) + 4
    noise = acq_mod.gaussian_noise(rng, (s, s))
    noise = cv2.GaussianBlur(noise, (0, 0), sigmaX=2.2 / spacing, sigmaY=0.35 / spacing)
    rot = cv2.getRotationMatrix2D((s / 2, s / 2), -angle_deg, 1.0)
    rot[0, 2] -= (s - w) / 2
    rot[1, 2] -= (s - h) / 2
    out = cv2.warpAffine(noise, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    out /= float(out.std()) + 1e-6
    return np.maximum(1.0 + 0.3 * out, 0.0)


def _lesions_into(h: HipScene, grid: Grid, head_hit, layers: Layers):
    hw, inside = head_hit
    layers.head_masks[h.side] = (hw, inside)
    if h.plan is None or h.plan.stage == "absence":
        return
    xs, ys = grid.coords(hw)
    d_canc, d_cort = findings.draw_lesions(
        h.plan, h.femur.head_centre, h.femur.head_radius, h.femur.head_frame, h.head_rho, xs, ys
    )
    layers.cancellous[hw[0] : hw[1], hw[2] : hw[3]] += d_canc
    layers.cortical[hw[0] : hw[1], hw[2] : hw[3]] += d_cort


def _sourcil_into(h: HipScene, grid: Grid, layers: Layers):
    """The sclerotic roof line following the socket surface, thickest where weight is borne."""
    a0, a1 = h.roof_deg
    angles = np.linspace(a0, a1, 24)
    idx = np.round(angles).astype(int) % findings.PROFILE_SAMPLES
    t = np.linspace(0, 1, len(angles))
    width = 0.5 + 1.4 * np.sin(np.pi * np.clip(t * 1.1, 0, 1)) ** 0.7
    dens = 1.8
    if h.plan is not None and h.plan.acetabulum is not None:
        width *= 1.0 + 0.25 * h.plan.acetabulum["sclerosis"]
    rad = h.acet_rho[idx] + width * 0.9
    c = h.femur.head_centre
    pts = np.column_stack([c[0] + rad * np.cos(np.radians(angles)), c[1] + rad * np.sin(np.radians(angles))])
    line = anatomy.Tube(pts, width, 0.0, density=dens, stretch=np.ones(len(pts) - 1), additive=True)
    _lines_into([line], grid, None, layers)
    if h.plan is not None and h.plan.acetabulum is not None and h.plan.acetabulum["cysts"]:
        rng = np.random.default_rng(h.plan.acetabulum["cyst_seed"])
        for _ in range(h.plan.acetabulum["cysts"]):
            a = math.radians(rng.uniform(min(a0, a1) + 10, max(a0, a1) - 10))
            i = int(round(math.degrees(a))) % findings.PROFILE_SAMPLES
            rr = h.acet_rho[i] + rng.uniform(4, 7)
            ctr = c + rr * np.array([math.cos(a), math.sin(a)])
            hole = anatomy.Hole(ctr, float(rng.uniform(2.0, 3.5)), rim=0.8)
            win = (0, grid.shape[0], 0, grid.shape[1])
            _hole_into(hole, grid, win, layers.cancellous, layers.cortical)


def _osteophytes_into(scene: Scene, grid: Grid, layers: Layers):
    for side, h in scene.hips.items():
        if h.plan is None or not h.plan.osteophytes or h.head_rho is None:
            continue
        lm = scene.geometry.hemipelvis[side]
        neck = h.femur.landmarks["neck_base"] - h.femur.head_centre
        rim = lm["acetabulum_centre"] + (lm["lateral_rim"] - lm["acetabulum_centre"]) * 1.02
        for _, pts, radii in findings.osteophyte_spurs(
            h.plan, h.femur.head_centre, h.head_rho, anatomy.SIDE_SIGN[side], rim, neck
        ):
            spur = anatomy.Tube(pts, radii, 0.8, density=0.8, stretch=np.ones(len(pts) - 1))
            win = _bone_window(anatomy.Bone("spur", tubes=[spur]), grid)
            if win is None:
                continue
            hh, ww = win[1] - win[0], win[3] - win[2]
            outer, inner, canc = (np.zeros((hh, ww), np.float32) for _ in range(3))
            _tube_into(spur, grid, win, outer, inner, canc)
            layers.cortical[win[0] : win[1], win[2] : win[3]] += outer - inner
            layers.cancellous[win[0] : win[1], win[2] : win[3]] += canc


def trabecular_texture(shape, spacing, rng, lattice_mm: float = 0.45, contrast: float = 0.24) -> np.ndarray:
    """The trabecular network of cancellous bone as a multiplicative texture with mean ~1.

    The zero crossings of band-pass noise (~0.5-1.2 mm) form connected, curving lines; a ridge
    function of the band turns them into a lattice of plates and rods with marrow spaces between,
    instead of the sand-like grain of plain filtered noise.
    """
    noise = acq_mod.gaussian_noise(rng, shape)
    fine = cv2.GaussianBlur(noise, (0, 0), max(lattice_mm / spacing, 0.6))
    coarse = cv2.GaussianBlur(fine, (0, 0), 1.2 / spacing)
    band = fine - coarse
    band *= np.float32(1.0 / (0.7 * float(band[::4, ::4].std()) + 1e-6))
    ridge = cv2.exp(-(band * band))  # 1 on the zero-crossing lines, ~0 in the marrow spaces
    ridge *= np.float32(contrast)
    ridge += np.float32(1.0 - 0.42 * contrast)
    return ridge


# --------------------------------------------------------------------------- soft tissue geometry


def body_outline(scene: Scene) -> tuple[list[np.ndarray], float, float, dict]:
    """Trunk and thigh polygons (mm), half depth, fat thickness and soft-tissue details."""
    anat = scene.spec.anatomy
    geo = scene.geometry
    st = anat.soft_tissue
    fat = 8.0 + 38.0 * st
    x0, y0, w, h = scene.acquisition.field
    top = y0 - 60
    parts = []
    trunk_l, trunk_r = [], []
    for side, sink in (("right", trunk_l), ("left", trunk_r)):
        lm = geo.hemipelvis[side]
        f = geo.femurs[side]
        sgn = anatomy.SIDE_SIGN[side]
        crest_x = abs(lm["crest_lateral"][0])
        gt_x = abs(f.landmarks["greater_trochanter"][0]) if scene.spec.view == "AP" else abs(f.head_centre[0]) + 35
        fold = lm["ischial_tuberosity"][1] + (45 if scene.spec.view == "AP" else 110)
        inner_x = max(abs(f.landmarks["shaft_distal"][0]) - 25.0 - 30.0 * st, 8.0)
        pts = [
            (crest_x + fat + 14, top),
            (crest_x + fat + 8, lm["crest_lateral"][1]),
            (max(gt_x + 30 + fat, crest_x + fat + 12), 5.0),
            (gt_x + 22 + fat, fold),
            (inner_x, y0 + h + 80),
        ]  # perineum and the medial thighs down to the film's edge
        sink.extend((sgn * x, y) for x, y in pts)
        # thigh: a band along the projected femoral shaft
        a = f.landmarks["neck_base"]
        b = f.landmarks["shaft_distal"]
        d = (b - a) / np.linalg.norm(b - a)
        n = np.array([-d[1], d[0]])
        half = 62.0 + 42.0 * st
        p0, p1 = a - d * 20, a + d * 500
        parts.append(np.array([p0 + n * half, p1 + n * half, p1 - n * half, p0 - n * half]))
    trunk = np.array(trunk_l + trunk_r[::-1])
    parts.insert(0, trunk)
    # skin is a smooth curve: round the hand-placed corners (gluteal bulge, flank, thigh edges)
    parts = [anatomy.chaikin(np.vstack([p, p[:1]]), 3) for p in parts]
    half_depth = 95.0 + 60.0 * st

    tdl, tdr = geo.hemipelvis["right"]["teardrop"], geo.hemipelvis["left"]["teardrop"]
    hc = geo.hemipelvis["left"]["measures"].crest_height
    planes = []
    for side in ("right", "left"):
        lm = geo.hemipelvis[side]
        c = lm["acetabulum_centre"]
        s = anatomy.SIDE_SIGN[side]
        td = lm["teardrop"]
        planes.append(np.array([c + (s * 30, -58), c + (s * 47, -18), c + (s * 54, 25), c + (s * 50, 75)]))
        planes.append(
            np.array(
                [
                    c + (s * -22, -50),
                    c + (s * -32, -5),
                    c + (s * -26, 45),
                    scene.geometry.femurs[side].landmarks["lesser_trochanter"],
                ]
            )
        )
        planes.append(np.array([td + (s * -11, -30), td + (s * -14, 10), td + (s * -9, 40)]))
    mid = 0.5 * (tdl + tdr)
    bladder = [(mid[0], mid[1] - 0.16 * hc, 40.0 + 8 * st, 28.0)]
    pw = anat.pelvis_width_mm
    # large-bowel gas: the rectosigmoid looping over the sacrum from the left iliac fossa, and the
    # caecum / ascending colon in the right iliac fossa (the patient's right is image left, -x)
    mx = mid[0]
    colon = [
        (
            np.array(
                [
                    (mx + 0.24 * pw, -0.68 * hc),
                    (mx + 0.22 * pw, -0.56 * hc),
                    (mx + 0.10 * pw, -0.50 * hc),
                    (mx + 0.02 * pw, -0.62 * hc),
                    (mx - 0.05 * pw, -0.48 * hc),
                    (mx, -0.30 * hc),
                    (mx + 0.01 * pw, -0.12 * hc),
                ]
            ),
            24.0,
            0.5,
        ),
        (
            np.array(
                [
                    (mx - 0.24 * pw, -0.22 * hc),
                    (mx - 0.26 * pw, -0.40 * hc),
                    (mx - 0.25 * pw, -0.58 * hc),
                    (mx - 0.23 * pw, -0.76 * hc),
                ]
            ),
            40.0,
            0.7,
        ),
    ]
    # gluteal and thigh intermuscular fat planes: long gentle curves lateral to the wing and along
    # the thighs (gluteus medius/minimus, vastus lateralis, adductors)
    for side in ("right", "left"):
        lm = geo.hemipelvis[side]
        f = geo.femurs[side]
        s = anatomy.SIDE_SIGN[side]
        crest = lm["crest_lateral"]
        gt = f.landmarks["greater_trochanter"]
        planes.append(
            np.array(
                [
                    crest + (s * 8, -25),
                    crest + (s * 14, 30),
                    0.5 * (crest + gt) + (s * 22, 10),
                    gt + (s * 14, -12),
                    gt + (s * 12, 25),
                ]
            )
        )
        a_, b_ = f.landmarks["neck_base"], f.landmarks["shaft_distal"]
        dd = (b_ - a_) / np.linalg.norm(b_ - a_)
        nn = np.array([-dd[1], dd[0]])
        nn *= 1.0 if nn[0] * s > 0 else -1.0  # towards lateral
        for off, t0, t1 in ((30.0, 10.0, 300.0), (-34.0, 40.0, 300.0), (48.0, 60.0, 300.0)):
            planes.append(
                np.array([a_ + dd * t + nn * (off + 4.0 * math.sin(t / 40.0)) for t in np.linspace(t0, t1, 6)])
            )
    return parts, half_depth, fat, {"fat_planes": planes, "bladder": bladder, "colon": colon}


# --------------------------------------------------------------------------- entry point


def output_grid(acq: Acquisition, scale: float) -> tuple[tuple[int, int], float]:
    rows, cols = acq.size_px
    out_rows, out_cols = max(int(round(rows * scale)), 16), max(int(round(cols * scale)), 16)
    return (out_rows, out_cols), acq.field[2] / out_cols


def working_grid(acq: Acquisition, out_spacing: float) -> Grid:
    x0, y0, w, h = acq.field
    spacing = max(WORK_SPACING_MM, out_spacing)
    cols, rows = max(int(round(w / spacing)), 8), max(int(round(h / spacing)), 8)
    return Grid(x0, y0, w / cols, h / rows, (rows, cols))


def render_layers(spec: RadiographSpec, scale: float = 1.0):
    """Scene, working grid and attenuation layers (for tests and inspection)."""
    cv2.setNumThreads(1)  # single-threaded cv2: same pixels in any process
    scene = build_scene(spec)
    out_shape, out_spacing = output_grid(scene.acquisition, scale)
    grid = working_grid(scene.acquisition, out_spacing)
    layers = rasterise(scene, grid, np.random.default_rng([spec.seed, 3]))
    return scene, grid, layers, out_shape, out_spacing


def scene_variation(scene: Scene) -> Variation:
    """The radiograph's domain-randomisation factors (own random stream: the anatomy stays put)."""
    heads = [_bbox_mm(h.head_contour()) for h in scene.hips.values() if h.head_rho is not None]
    teardrops = [scene.geometry.hemipelvis[side]["teardrop"] for side in ("right", "left")]
    midline = (float(np.mean([t[0] for t in teardrops])), float(np.mean([t[1] for t in teardrops])))
    return choose_variation(
        np.random.default_rng([scene.spec.seed, 7]),
        scene.acquisition.field,
        scene.spec.anatomy.soft_tissue,
        heads,
        midline,
    )


def render_radiograph(
    spec: RadiographSpec, scale: float = 1.0, variation: Variation | None = None
) -> RenderedRadiograph:
    """Pixels (uint16, bone bright) and ground truth of one radiograph.

    ``scale`` < 1 renders a proportionally smaller image (pixel spacing grows by 1/scale).
    ``variation`` replaces the radiograph's own randomisation factors (the docs' grid shows each).
    """
    scene, grid, layers, out_shape, out_spacing = render_layers(spec, scale)
    acq = scene.acquisition
    variation = variation or scene_variation(scene)
    texture = trabecular_texture(
        grid.shape,
        grid.spacing,
        np.random.default_rng([spec.seed, 4]),
        variation.trabecular_scale_mm,
        variation.trabecular_contrast,
    )
    a_bone = MU_CORTEX * variation.cortical_density * layers.cortical
    a_bone += (MU_CANCELLOUS * variation.bone_density * layers.cancellous) * texture
    a_bone += MU_CEMENT * layers.cement
    a_metal = MU_METAL * (layers.metal + draw_foreign_bodies(grid, variation.foreign_bodies))
    parts, half_depth, fat, details = body_outline(scene)
    a_soft = acq_mod.soft_tissue(grid, parts, half_depth, fat, details, np.random.default_rng([spec.seed, 5]))
    a_soft += skin_fold_attenuation(grid, variation.skin_folds, acq_mod.MU_FAT)
    pixels = acq_mod.detect(
        a_bone, a_soft, a_metal, grid, acq, out_shape, out_spacing, np.random.default_rng([spec.seed, 6]), variation
    )
    x0, y0 = acq.field[0], acq.field[1]

    def to_pixels(box_mm: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """A box in mm → COCO [x, y, w, h] in output pixels, clipped to the image."""
        u0, v0 = max((box_mm[0] - x0) / out_spacing, 0.0), max((box_mm[1] - y0) / out_spacing, 0.0)
        u1 = min((box_mm[2] - x0) / out_spacing, float(out_shape[1]))
        v1 = min((box_mm[3] - y0) / out_spacing, float(out_shape[0]))
        return (float(u0), float(v0), float(u1 - u0), float(v1 - v0))

    heads = []
    for hip in spec.hips:
        h = scene.hips[hip.side]
        if h.head_rho is None:
            continue
        plan = h.plan
        heads.append(
            RenderedHead(
                side=hip.side,
                stage=hip.stage,
                bbox=to_pixels(_bbox_mm(h.head_contour())),
                notes=plan.notes if plan else (),
                findings=plan.findings if plan else (),
                typical=hip.typical,
            )
        )
    balls = [to_pixels(box) for box in prosthetic_head_boxes_mm(scene)]
    prosthetic_heads = [box for box in balls if box[2] >= 1.0 and box[3] >= 1.0]  # inside the field
    return RenderedRadiograph(
        pixels=pixels,
        bits_stored=acq.bits_stored,
        pixel_spacing_mm=out_spacing,
        heads=heads,
        marker=acq.marker,
        prosthetic_heads=prosthetic_heads,
    )


def prosthetic_head_boxes_mm(scene: Scene) -> list[tuple[float, float, float, float]]:
    """The box (mm) of each prosthetic ball: the first tube of a metal prosthesis (see
    :func:`avn.phantom.anatomy.build_prosthesis`), its centre ± its radius."""
    boxes = []
    for bone in scene.geometry.bones:
        if bone.name == "prosthesis" and bone.material == "metal" and bone.tubes:
            ball = bone.tubes[0]
            centre, radius = np.asarray(ball.points, dtype=np.float64)[0], float(np.max(ball.radii))
            boxes.append((centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius))
    return boxes
