"""Geometry of the pelvis and proximal femurs, in millimetres, for the AP and frog-leg (FL) views.

Frame: x points to the image's right (the patient's LEFT: radiological convention), y points caudal
(image down), z points towards the X-ray source (anterior in a supine AP). The origin is on the
midline at the height of the femoral head centres. The projection is orthographic along z; the
magnification of a real film is left out so that the SPEC's adult proportions hold in the image.

Each half of the pelvis and each femur is built for a canonical side whose lateral direction is +x
(the patient's left) and mirrored for the patient's right. Bones are described by three kinds of
primitive that ``render`` rasterises into attenuation maps:

* ``Tube``: a tapered cylinder along a polyline (femoral shaft, pubic rami, crests). Its projected
  chord length gives the rounded profile and the bright cortical edges of a tubular bone.
* ``Slab``: a flat bone (iliac wing, sacrum, vertebral body) given by its outline and half thickness.
* ``Hole``: a spherical gap in a bone (sacral foramina).

Tubes flagged ``additive`` are cortical surfaces seen edge-on (the iliopectineal line, the teardrop,
the sourcil): they are summed onto the bone instead of being part of its outline.

A hip bone and a femur are assembled from one function per part (iliac wing, pubic body, lesser
trochanter, calcar...), each returning its primitives; the measurements the parts share are small
frozen dataclasses (``HipBoneMeasures``, ``ObturatorMeasures``, ``FemurAxes``). The femoral head
itself is drawn by the renderer from the findings' head profile.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from avn.phantom.specs import RadiographSpec, SubjectAnatomy

# Patient's left is drawn on the image's right (+x); the patient's right on the image's left.
SIDE_SIGN: dict[str, float] = {"left": 1.0, "right": -1.0}


# --------------------------------------------------------------------------- primitives (2D, mm)


@dataclass
class Tube:
    """A tapered cylinder along a projected polyline."""

    points: np.ndarray  # (n, 2) projected axis, mm
    radii: np.ndarray  # (n,) radius at each point, mm
    cortex: float | np.ndarray  # thickness of the cortical shell, mm (or one per point)
    density: float | np.ndarray = 1.0  # cancellous density vs reference trabecular bone (or per point)
    stretch: np.ndarray | None = None  # (n-1,) 1/cos(out-of-plane tilt) of each segment
    additive: bool = False  # an edge-on cortical line summed onto the bone
    role: str = ""  # trabecular group name ("compressive", "tensile") for oriented texture
    flat: float = 1.0  # depth/width ratio of the cross-section (<1: a flattened column)


@dataclass
class Slab:
    """A flat bone: projected outline, half thickness, cortical shell."""

    polygon: np.ndarray  # (n, 2) mm
    half_thickness: float
    cortex: float
    density: float = 1.0
    flat: float = 1.0  # scales the chords: a thin plate whose rounded rim is wider than it is thick
    keep_in_socket: bool = False  # acetabular walls: drawn over the head, not cut by the socket
    fossa: float = 0.0  # fraction of the thickness lost away from the rim (thin iliac fossa)
    rim_mm: float = 12.0  # width of the thick rim before the fossa thins the plate
    fossa_shape: tuple[float, float, float, float] | None = None  # oval (cx, cy, ax, ay) mm of the thinning


@dataclass
class Hole:
    """A spherical gap in a bone (foramen), optionally with a sclerotic rim."""

    centre: np.ndarray  # (2,)
    radius: float
    rim: float = 0.0


@dataclass
class Body:
    """A vertebral body: a short, waisted elliptic cylinder whose axis runs top -> bottom.

    Projected AP, each row crosses an elliptic section: the chord 2 * depth * sqrt(1 - (x/R)^2)
    gives the cylinder-like thickness profile, the cortical shell seen tangentially the bright
    lateral walls, and the flat endplates (``endplate`` mm of dense bone) thin dense lines.
    """

    top: np.ndarray  # (2,) projected centre of the superior endplate
    bottom: np.ndarray  # (2,) projected centre of the inferior endplate
    half_width: float  # at the endplates (the waist is ``waist`` times narrower)
    depth_ratio: float  # anteroposterior / transverse half axis
    cortex: float
    endplate: float
    waist: float = 0.92
    density: float = 0.8


@dataclass
class Bone:
    """Primitives of one bone; within a bone they merge (max), different bones overlap (sum)."""

    name: str
    tubes: list[Tube] = field(default_factory=list)
    slabs: list[Slab] = field(default_factory=list)
    holes: list[Hole] = field(default_factory=list)
    lines: list[Tube] = field(default_factory=list)  # additive cortical lines
    bodies: list[Body] = field(default_factory=list)  # vertebral bodies
    groups: list[Tube] = field(default_factory=list)  # oriented trabecular groups (denser, streaked)
    material: str = "bone"  # "bone" or "metal"


# --------------------------------------------------------------------------- pose


@dataclass(frozen=True)
class LegPose:
    """How a femur is placed: the projected shaft direction and twist about the shaft."""

    abduction_deg: float  # projected angle of the shaft from vertical, lateral positive
    elevation_deg: float  # shaft tilt out of the film plane towards the source (hip flexion)
    twist_deg: float  # rotation about the shaft (external rotation positive)


@dataclass(frozen=True)
class Pose:
    """Pelvic position on the table and the two legs for one radiograph."""

    yaw_deg: float  # about the vertical axis: the classic rotated-pelvis asymmetry
    tilt_deg: float  # about the left-right axis: inlet/outlet tilt
    roll_deg: float  # in the film plane
    shift_mm: tuple[float, float]
    legs: dict[str, LegPose]


def sample_pose(view: str, rng: np.random.Generator) -> Pose:
    """A slightly imperfect patient position; FL abducts and externally rotates the thighs."""
    legs = {}
    for side in ("right", "left"):
        if view == "FL":
            legs[side] = LegPose(
                abduction_deg=float(rng.uniform(40.0, 50.0)),
                elevation_deg=float(rng.uniform(15.0, 25.0)),
                # relative to the AP position (itself ~15 deg internally rotated)
                twist_deg=float(rng.uniform(65.0, 85.0)),
            )
        else:
            # AP is taken with ~15 deg internal rotation so the neck lies in the film plane;
            # the residual error of that positioning is the twist.
            legs[side] = LegPose(
                abduction_deg=float(rng.uniform(-9.0, -4.0)),  # the anatomical axis runs medially
                elevation_deg=float(rng.uniform(0.0, 5.0)),
                twist_deg=float(rng.uniform(-10.0, 12.0)),
            )
    return Pose(
        yaw_deg=float(rng.normal(0.0, 2.5)),
        tilt_deg=float(rng.normal(0.0, 3.0)),
        roll_deg=float(rng.normal(0.0, 1.2)),
        shift_mm=(float(rng.normal(0.0, 6.0)), float(rng.normal(0.0, 6.0))),
        legs=legs,
    )


# --------------------------------------------------------------------------- rotations


def rotation_about(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rodrigues' rotation matrix about ``axis``."""
    axis = np.asarray(axis, float)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle_rad) * k + (1 - math.cos(angle_rad)) * (k @ k)


def rotation_aligning(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking direction ``a`` onto direction ``b``."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    v = np.cross(a, b)
    s = float(np.linalg.norm(v))
    if s < 1e-9:
        return np.eye(3)
    return rotation_about(v, math.atan2(s, float(a @ b)))


def pelvic_rotation(pose: Pose) -> np.ndarray:
    """Whole-body rotation: yaw (about y), tilt (about x), then roll in the film plane."""
    yaw = rotation_about(np.array([0.0, 1.0, 0.0]), math.radians(pose.yaw_deg))
    tilt = rotation_about(np.array([1.0, 0.0, 0.0]), math.radians(pose.tilt_deg))
    roll = rotation_about(np.array([0.0, 0.0, 1.0]), math.radians(pose.roll_deg))
    return roll @ tilt @ yaw


class Projector:
    """Maps canonical-side 3D points (lateral = +x) to projected 2D mm for one side."""

    def __init__(self, pose: Pose, side_sign: float, local: np.ndarray | None = None, origin: np.ndarray | None = None):
        mirror = np.diag([side_sign, 1.0, 1.0])
        local = np.eye(3) if local is None else local
        origin = np.zeros(3) if origin is None else origin
        # canonical point p -> world: pelvis_rot @ mirror @ (local @ p + origin)
        self.linear = pelvic_rotation(pose) @ mirror @ local
        self.offset = pelvic_rotation(pose) @ mirror @ origin
        self.shift = np.asarray(pose.shift_mm, float)

    def world(self, pts: np.ndarray) -> np.ndarray:
        pts = np.atleast_2d(np.asarray(pts, float))
        return pts @ self.linear.T + self.offset

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        return self.world(pts)[:, :2] + self.shift

    def tube(self, pts, radii, cortex, density=1.0, additive=False, role="", flat=1.0, smooth: int = 1) -> Tube:
        pts3 = np.atleast_2d(np.asarray(pts, float))
        if pts3.shape[1] == 2:
            pts3 = np.column_stack([pts3, np.zeros(len(pts3))])
        n = len(pts3)
        if smooth and 3 <= n <= 12:
            # round the corners of hand-placed control polygons (densely sampled curves are smooth
            # already and would only cost segments); radii, cortex and density ride along
            cols = [pts3, np.broadcast_to(np.asarray(radii, float), (n,))[:, None]]
            per_point = [np.ndim(cortex) > 0, np.ndim(density) > 0]
            cols += [np.asarray(x, float)[:, None] for x, on in zip((cortex, density), per_point, strict=True) if on]
            sm = chaikin(np.hstack(cols), smooth)
            pts3, radii = sm[:, :3], sm[:, 3]
            k = 4
            if per_point[0]:
                cortex, k = sm[:, k], k + 1
            if per_point[1]:
                density = sm[:, k]
        w = self.world(pts3)
        seg3 = np.linalg.norm(np.diff(w, axis=0), axis=1)
        seg2 = np.linalg.norm(np.diff(w[:, :2], axis=0), axis=1)
        # a tube tilted out of the film plane is crossed obliquely: longer chords (capped)
        stretch = np.clip(seg3 / np.maximum(seg2, 1e-6), 1.0, 2.2)
        return Tube(
            w[:, :2] + self.shift,
            np.broadcast_to(np.asarray(radii, float), (len(w),)).copy(),
            cortex,
            density,
            stretch,
            additive,
            role,
            flat,
        )

    def slab(self, pts, half_thickness, cortex, density=1.0, flat=1.0, fossa=0.0, rim_mm=12.0, smooth: int = 3) -> Slab:
        """A flat bone from a closed outline, its corners rounded (Chaikin) into a smooth contour."""
        pts3 = np.atleast_2d(np.asarray(pts, float))
        if pts3.shape[1] == 2:
            pts3 = np.column_stack([pts3, np.zeros(len(pts3))])
        if smooth:
            pts3 = chaikin(pts3, smooth, closed=True)
        return Slab(self(pts3), half_thickness, cortex, density, flat, fossa=fossa, rim_mm=rim_mm)


def chaikin(values: np.ndarray, iterations: int = 2, closed: bool | None = None) -> np.ndarray:
    """Corner cutting: a polyline/polygon (n, k) -> a smooth curve through its control points' hull.

    Every column (x, y, z, radius, ...) is smoothed together. Open curves keep their end points;
    a curve is treated as closed when its first and last rows coincide (or ``closed`` says so).
    Two iterations turn the hand-placed anatomical corners into rounded contours (no facets).
    """
    v = np.asarray(values, float)
    if len(v) < 3:
        return v
    if closed is None:
        closed = bool(np.allclose(v[0], v[-1]))
    if closed and np.allclose(v[0], v[-1]):
        v = v[:-1]
    for _ in range(iterations):
        if closed:
            nxt = np.roll(v, -1, axis=0)
            q, r = 0.75 * v + 0.25 * nxt, 0.25 * v + 0.75 * nxt
            v = np.stack([q, r], axis=1).reshape(-1, v.shape[1])
        else:
            a, b = v[:-1], v[1:]
            q, r = 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b
            mid = np.stack([q, r], axis=1).reshape(-1, v.shape[1])
            v = np.vstack([v[:1], mid, v[-1:]])
    if closed:
        v = np.vstack([v, v[:1]])
    return v


def with_depth(points_xy: list[tuple[float, float]], depths: list[float] | float) -> np.ndarray:
    """Attach a depth (z, mm) to 2D canonical points."""
    xy = np.asarray(points_xy, float)
    z = np.broadcast_to(np.asarray(depths, float), (len(xy),))
    return np.column_stack([xy, z])


def arc(centre, radius, start_deg, stop_deg, n) -> np.ndarray:
    """Points on a circle; angles measured from 'up' (-y) towards lateral (+x)."""
    a = np.radians(np.linspace(start_deg, stop_deg, n))
    return np.column_stack([centre[0] + radius * np.sin(a), centre[1] - radius * np.cos(a)])


# --------------------------------------------------------------------------- subject measures


@dataclass(frozen=True)
class SideMeasures:
    """Per-side sizes derived from the subject (small left/right asymmetries included)."""

    head_radius: float
    head_x: float  # |x| of the head centre
    acetabular_radius: float  # head radius + joint space
    rim_angle_deg: float  # centre-edge angle that yields the subject's acetabular inclination
    teardrop: tuple[float, float]  # canonical (x, y) of the teardrop's inferior tip
    crest_height: float  # iliac crest above the head centre


def side_measures(anat: SubjectAnatomy, side: str) -> SideMeasures:
    rng = np.random.default_rng([anat.anatomy_seed, 11, 0 if side == "right" else 1])
    diameter = anat.head_diameter_mm + (0.5 if side == "right" else -0.5) * anat.head_asymmetry_mm
    r = diameter / 2.0
    itd2 = anat.inter_teardrop_mm / 2.0 + rng.normal(0.0, 0.8)
    teardrop = (itd2, 0.6 * r)
    head_x = itd2 + r + 9.0 + rng.normal(0.0, 1.0)
    big_r = r + anat.joint_space_mm
    rim = rim_angle_for_inclination(anat.acetabular_inclination_deg, (head_x, 0.0), big_r, teardrop)
    crest = 0.45 * anat.pelvis_width_mm * (0.95 if anat.sex == "F" else 1.0) + rng.normal(0, 3)
    return SideMeasures(r, head_x, big_r, rim, teardrop, crest)


def rim_angle_for_inclination(incl_deg, centre, radius, teardrop) -> float:
    """Centre-edge angle of the lateral rim so that teardrop->rim makes the given inclination."""
    lo, hi = -10.0, 70.0
    for _ in range(40):  # a more lateral (lower) rim flattens the line: bisection
        mid = 0.5 * (lo + hi)
        ex = centre[0] + radius * math.sin(math.radians(mid))
        ey = centre[1] - radius * math.cos(math.radians(mid))
        incl = math.degrees(math.atan2(teardrop[1] - ey, ex - teardrop[0]))
        if incl > incl_deg:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def acetabular_inclination(m: SideMeasures) -> float:
    """Inclination (deg) of the teardrop -> lateral rim line, canonical side."""
    ex, ey = arc((m.head_x, 0.0), m.acetabular_radius, m.rim_angle_deg, m.rim_angle_deg, 1)[0]
    return math.degrees(math.atan2(m.teardrop[1] - ey, ex - m.teardrop[0]))


# --------------------------------------------------------------------------- the pelvis

# The pubis and the obturator foramen it frames (canonical side, mm).
PUBIC_BODY_RADIUS_MM = 10.0
SYMPHYSIS_HALF_GAP_MM = 2.8  # the symphyseal gap is ~5-6 mm
FORAMEN_HALF_HEIGHT_MM = 23.0
# The bar of bone around the foramen: its radius at angles around the foramen centre (deg, 0 =
# lateral, 90 = caudal), thickest where the acetabulum and the ischium join it.
FORAMEN_FRAME_DEG = np.array([-90, -45, 0, 45, 90, 135, 180, 225, 270])
#                              sup ramus, acetab., ischium, tuberos., isch. ramus, inf. ramus, pubis, -, sup
FORAMEN_FRAME_RADIUS_MM = np.array([6.8, 12.0, 11.5, 13.5, 5.2, 4.8, PUBIC_BODY_RADIUS_MM, 7.5, 6.8])


@dataclass(frozen=True)
class HipBoneMeasures:
    """The measurements one hip bone's parts share (canonical side: lateral = +x, mm)."""

    female: bool
    half_width: float  # midline to the most lateral point of the iliac crest
    crest_height: float  # iliac crest above the head centre
    head_x: float  # |x| of the acetabular (and head) centre
    head_radius: float
    acetabular_radius: float
    rim_deg: float  # centre-edge angle of the lateral acetabular rim
    teardrop: tuple[float, float]  # (x, y) of the teardrop's inferior tip
    inlet: float  # half width of the pelvic inlet

    @property
    def acetabular_centre(self) -> tuple[float, float]:
        return (self.head_x, 0.0)


@dataclass(frozen=True)
class ObturatorMeasures:
    """The obturator foramen and the pubic and ischial landmarks placed around it (mm)."""

    half_width: float
    half_height: float
    centre: tuple[float, float]
    tilt_rad: float  # the foramen's long axis leans laterally at the top
    symphysis_x: float  # centre of the pubic body
    superior_ramus_y: float  # upper border of the superior pubic ramus at the foramen
    tuberosity: tuple[float, float]  # ischial tuberosity


def build_hemipelvis(anat: SubjectAnatomy, side: str, pose: Pose) -> tuple[Bone, dict]:
    """One hip bone (ilium, ischium, pubis, acetabulum) and its projected landmarks.

    The parts draw their small shape jitter from one generator, in the order below, and the renderer
    merges a bone's primitives in list order: reordering them would change every subject's pelvis.
    """
    m = side_measures(anat, side)
    rng = np.random.default_rng([anat.anatomy_seed, 12, 0 if side == "right" else 1])
    jitter = lambda s=1.5: rng.normal(0.0, s)  # noqa: E731 - small shape jitter
    hb = hip_bone_measures(anat, m, rng)
    proj = Projector(pose, SIDE_SIGN[side])
    bone = Bone(f"hip_{side}")

    wing = iliac_wing_outline(hb, jitter)
    bone.slabs.append(iliac_wing(proj, hb, wing))
    bone.tubes.append(iliac_crest(proj, hb, wing))
    bone.tubes.append(sciatic_buttress(proj, hb))
    bone.groups.append(iliac_pillar(proj, hb))
    bone.tubes.append(anterior_column(proj, hb))
    # the acetabular cup itself (walls over the head, socket) is drawn by render._cut_socket

    ob = obturator_measures(hb, jitter)
    bone.tubes.append(obturator_ring(proj, ob))
    bone.tubes.append(superior_pubic_ramus(proj, hb, ob))
    bone.tubes.append(pubic_body(proj, ob))
    bone.tubes.append(ischial_tuberosity(proj, ob))
    bone.tubes.append(ischial_body(proj, hb, ob))
    bone.tubes.append(ischial_spine(proj, hb))

    # Edge-on cortical lines: iliopectineal, ilioischial, teardrop, acetabular rims, symphysis.
    bone.lines.append(iliopectineal_line(proj, hb, ob))
    bone.lines.append(ilioischial_line(proj, hb, ob))
    bone.lines.append(teardrop_line(proj, hb))
    bone.lines.extend(acetabular_rim_lines(proj, hb))
    bone.lines.append(symphyseal_surface(proj, ob))
    return bone, hemipelvis_landmarks(proj, hb, ob, m)


def hip_bone_measures(anat: SubjectAnatomy, m: SideMeasures, rng: np.random.Generator) -> HipBoneMeasures:
    """The side's measures plus the pelvis' half width (jittered per side) and the inlet."""
    female = anat.sex == "F"
    tdx, _ = m.teardrop
    return HipBoneMeasures(
        female=female,
        half_width=anat.pelvis_width_mm / 2.0 + rng.normal(0, 1.5),
        crest_height=m.crest_height,
        head_x=m.head_x,
        head_radius=m.head_radius,
        acetabular_radius=m.acetabular_radius,
        rim_deg=m.rim_angle_deg,
        teardrop=m.teardrop,
        inlet=tdx + (6.0 if female else 1.0),  # the female inlet is rounder and wider
    )


# ---------------------------------------------------------------- ilium


def iliac_wing_outline(hb: HipBoneMeasures, jitter: Callable[..., float]) -> list[tuple[float, float, float]]:
    """The wing's posterior, superior (crest) and anterior border down to the acetabular roof (x, y, z)."""
    pw2, hc = hb.half_width, hb.crest_height
    hx, big_r = hb.head_x, hb.acetabular_radius
    j = jitter
    return [
        (0.16 * 2 * pw2 + j(), -0.80 * hc, -60),
        (0.20 * 2 * pw2 + j(), -0.93 * hc + j(), -55),
        (0.29 * 2 * pw2 + j(), -1.00 * hc + j(), -35),
        (0.39 * 2 * pw2 + j(), -0.96 * hc + j(), -5),
        (pw2 - 4, -0.86 * hc, 10),
        (pw2, -0.76 * hc, 20),
        (pw2 - 2, -0.62 * hc, 35),
        (pw2 - 7, -0.48 * hc, 50),
        (pw2 - 20, -0.41 * hc, 50),
        (pw2 - 23, -0.31 * hc, 45),
        (hx + 0.62 * big_r + 6, -0.55 * big_r - 6, 25),
    ]


def iliac_wing(proj: Projector, hb: HipBoneMeasures, wing: list) -> Slab:
    """The iliac wing: a thin plate closed by the acetabular roof and the pelvic brim, its fossa thinned."""
    pw2, hc, r, big_r = hb.half_width, hb.crest_height, hb.head_radius, hb.acetabular_radius
    tdx, _ = hb.teardrop
    inlet = hb.inlet
    roof = arc(hb.acetabular_centre, big_r, hb.rim_deg, -35.0, 7)
    wing_pts = (
        [p for p in wing]
        + [(x, y, 10) for x, y in roof]
        + [
            (tdx + 5, -0.55 * r, 10),
            (inlet, -0.30 * hc, -10),
            (inlet - 5, -0.52 * hc, -30),
            (0.17 * 2 * pw2, -0.68 * hc, -45),
        ]
    )
    wing_slab = proj.slab(wing_pts, 11.0, 1.3, density=1.0, flat=0.5, fossa=0.6, rim_mm=13.0)
    # the thin iliac fossa: a smooth oval in the upper wing, not a copy of the wing's outline
    f_c = proj(np.array([[0.60 * pw2, -0.72 * hc, -20.0]]))[0]
    wing_slab.fossa_shape = (float(f_c[0]), float(f_c[1]), 0.30 * pw2, 0.21 * hc)
    return wing_slab


def iliac_crest(proj: Projector, hb: HipBoneMeasures, wing: list) -> Tube:
    """The thick rim along the top of the wing, set just inside its outline."""
    pw2 = hb.half_width
    crest = [w[:3] for w in wing[1:8]]
    crest_in = [(x - 1.5 * np.sign(x - 0.3 * pw2), y + 2.0, z) for x, y, z in crest]
    return proj.tube(crest_in, [7.5, 6.0, 5.0, 5.5, 6.0, 5.0, 4.5], 1.6, flat=0.7)


def sciatic_buttress(proj: Projector, hb: HipBoneMeasures) -> Tube:
    """The posterior (sciatic) buttress from the acetabular roof to the sacroiliac joint."""
    pw2, hc, hx, big_r, inlet = hb.half_width, hb.crest_height, hb.head_x, hb.acetabular_radius, hb.inlet
    return proj.tube(
        with_depth(
            [(hx - 6, -big_r - 4), (0.5 * (hx + inlet) - 6, -0.45 * hc), (0.17 * 2 * pw2 + 4, -0.72 * hc)],
            [-10, -30, -50],
        ),
        [20.0, 17.0, 13.0],
        1.6,
        flat=0.45,
    )


def iliac_pillar(proj: Projector, hb: HipBoneMeasures) -> Tube:
    """The trabecular pillar: weight passes from the sacroiliac joint through the sciatic buttress to
    the acetabular roof along a band of oriented, denser trabeculae."""
    pw2, hc, hx, big_r, inlet = hb.half_width, hb.crest_height, hb.head_x, hb.acetabular_radius, hb.inlet
    return proj.tube(
        with_depth(
            [(0.17 * 2 * pw2 + 8, -0.70 * hc), (0.5 * (hx + inlet) - 2, -0.42 * hc), (hx - 2, -big_r - 16)],
            [-45, -28, -8],
        ),
        [11.0, 12.0, 8.0],
        0.0,
        density=0.2,
        role="pillar",
    )


def anterior_column(proj: Projector, hb: HipBoneMeasures) -> Tube:
    """The anterior column above the roof up to the anterior inferior iliac spine."""
    pw2, hc, hx, big_r = hb.half_width, hb.crest_height, hb.head_x, hb.acetabular_radius
    return proj.tube(with_depth([(hx + 2, -big_r - 8), (pw2 - 30, -0.33 * hc)], [15, 40]), [16.0, 7.0], 1.4, flat=0.5)


# ---------------------------------------------------------------- obturator foramen, pubis, ischium


def obturator_measures(hb: HipBoneMeasures, jitter: Callable[..., float]) -> ObturatorMeasures:
    """The foramen sits below the teardrop, between the pubic body and the ischium."""
    _, tdy = hb.teardrop
    a_f = (18.0 if hb.female else 15.5) + jitter(1.0)  # the female foramen is wider
    b_f = FORAMEN_HALF_HEIGHT_MM + jitter(1.0)
    r_pub = PUBIC_BODY_RADIUS_MM
    sym_x = SYMPHYSIS_HALF_GAP_MM + r_pub
    fx = sym_x + r_pub + a_f + 1.0
    fy = tdy + b_f + 3.0
    tub = (fx + a_f + 4.0 + jitter(), fy + b_f - 2.0 + jitter())
    return ObturatorMeasures(
        half_width=a_f,
        half_height=b_f,
        centre=(fx, fy),
        tilt_rad=math.radians(14.0 if hb.female else 20.0),
        symphysis_x=sym_x,
        superior_ramus_y=fy - b_f - 8.0,
        tuberosity=tub,
    )


def obturator_ring(proj: Projector, ob: ObturatorMeasures) -> Tube:
    """The bar framing the foramen: superior pubic ramus, pubic body, inferior pubic and ischial rami,
    tuberosity and ischial body, as one closed tube whose radius follows FORAMEN_FRAME_RADIUS_MM."""
    a_f, b_f, tilt = ob.half_width, ob.half_height, ob.tilt_rad
    fx, fy = ob.centre
    ring, radii = [], []
    for ang in np.radians(np.arange(0.0, 360.0 + 1e-6, 20.0)):
        deg = (math.degrees(ang) + 90) % 360 - 90
        rr = float(np.interp(deg, FORAMEN_FRAME_DEG, FORAMEN_FRAME_RADIUS_MM))
        # offset the bar's axis outwards along the ellipse normal by its own radius
        ex, ey = a_f * math.cos(ang), b_f * math.sin(ang)
        nx, ny = math.cos(ang) / a_f, math.sin(ang) / b_f
        nn = math.hypot(nx, ny)
        px, py = ex + rr * nx / nn, ey + rr * ny / nn
        ring.append(
            (
                fx + px * math.cos(tilt) - py * math.sin(tilt),
                fy + px * math.sin(tilt) + py * math.cos(tilt),
                15.0 - 35.0 * math.cos(ang),
            )
        )
        radii.append(rr)
    return proj.tube(ring, radii, 1.4, density=0.9)


def superior_pubic_ramus(proj: Projector, hb: HipBoneMeasures, ob: ObturatorMeasures) -> Tube:
    """The superior pubic ramus running from above the foramen into the acetabulum."""
    hx, big_r = hb.head_x, hb.acetabular_radius
    fx, _ = ob.centre
    return proj.tube(
        with_depth([(fx + 0.5 * ob.half_width, ob.superior_ramus_y - 1), (hx - 0.75 * big_r, 0.45 * big_r)], [30, 10]),
        [7.0, 10.5],
        1.4,
        flat=0.75,
    )


def pubic_body(proj: Projector, ob: ObturatorMeasures) -> Tube:
    """The pubic body with its flat symphyseal face."""
    sym_x, sup_y, b_f, r_pub = ob.symphysis_x, ob.superior_ramus_y, ob.half_height, PUBIC_BODY_RADIUS_MM
    _, fy = ob.centre
    return proj.tube(
        with_depth([(sym_x, sup_y + 2), (sym_x + 0.5, fy + 0.1 * b_f), (sym_x + 2.5, fy + 0.6 * b_f)], 55),
        [r_pub - 0.5, r_pub, r_pub - 2.0],
        1.4,
        density=0.9,
    )


def ischial_tuberosity(proj: Projector, ob: ObturatorMeasures) -> Tube:
    """The ischial tuberosity: thick, rounded inferolaterally."""
    tub = ob.tuberosity
    return proj.tube(
        with_depth([(tub[0] - 4, tub[1] - 10), (tub[0] + 1.5, tub[1] + 1.5)], -35),
        [12.0, 15.0],
        1.8,
        density=0.95,
        flat=0.85,
    )


def ischial_body(proj: Projector, hb: HipBoneMeasures, ob: ObturatorMeasures) -> Tube:
    """The ischial body (posterior column) behind the head, down to the tuberosity."""
    hx, big_r, tub = hb.head_x, hb.acetabular_radius, ob.tuberosity
    return proj.tube(
        with_depth(
            [(hx - 0.55 * big_r, -0.3 * big_r), (hx - 0.4 * big_r, 0.9 * big_r), (tub[0] - 3, tub[1] - 9)],
            [-25, -30, -35],
        ),
        [15.0, 14.0, 12.0],
        1.5,
        density=0.9,
        flat=0.8,
    )


def ischial_spine(proj: Projector, hb: HipBoneMeasures) -> Tube:
    """The ischial spine pointing into the true pelvis."""
    tdx, _ = hb.teardrop
    r = hb.head_radius
    return proj.tube(with_depth([(tdx - 4, -0.15 * r), (tdx - 15, 0.15 * r)], -45), [3.5, 1.5], 1.2)


# ---------------------------------------------------------------- edge-on cortical lines


def iliopectineal_line(proj: Projector, hb: HipBoneMeasures, ob: ObturatorMeasures) -> Tube:
    """The pelvic brim from the sacroiliac joint along the superior ramus to the pubic body."""
    pw2, hc, inlet = hb.half_width, hb.crest_height, hb.inlet
    tdx, _ = hb.teardrop
    fx, _ = ob.centre
    sup_y = ob.superior_ramus_y
    points = with_depth(
        [
            (0.16 * 2 * pw2 + 2, -0.72 * hc),
            (inlet - 2, -0.50 * hc),
            (inlet, -0.30 * hc),
            (tdx - 7, -0.05 * hc),
            (fx, sup_y - 7.5),
            (ob.symphysis_x + 2, sup_y - 8.0),
        ],
        [-45, -30, -10, 10, 45, 55],
    )
    return proj.tube(points, [1.3, 1.5, 1.5, 1.4, 1.2, 1.0], 0.0, density=1.5, additive=True)


def ilioischial_line(proj: Projector, hb: HipBoneMeasures, ob: ObturatorMeasures) -> Tube:
    """The quadrilateral plate seen edge-on, from the inlet down to the ischium."""
    hc, inlet, r = hb.crest_height, hb.inlet, hb.head_radius
    tdx, _ = hb.teardrop
    tub = ob.tuberosity
    points = with_depth(
        [(inlet - 3, -0.42 * hc), (tdx - 4, -0.1 * r), (tdx - 2, 0.8 * r), (tub[0] - 10, tub[1] - 6)], -30
    )
    return proj.tube(points, [1.0, 1.1, 1.1, 0.9], 0.0, density=0.9, additive=True)


def teardrop_line(proj: Projector, hb: HipBoneMeasures) -> Tube:
    """The radiographic teardrop: the acetabular fossa's floor and the pelvic wall seen edge-on."""
    tdx, tdy = hb.teardrop
    r = hb.head_radius
    points = with_depth(
        [
            (tdx + 4.5, -0.65 * r),
            (tdx + 3.5, 0.1 * r),
            (tdx + 1.0, tdy - 1.0),
            (tdx - 1.5, tdy - 0.5),
            (tdx - 3.5, 0.05 * r),
            (tdx - 3.0, -0.5 * r),
        ],
        0,
    )
    return proj.tube(points, [1.2, 1.4, 1.6, 1.6, 1.3, 1.0], 0.0, density=1.5, additive=True)


def acetabular_rim_lines(proj: Projector, hb: HipBoneMeasures) -> list[Tube]:
    """The anterior and posterior acetabular rims, both from the lateral rim down over the head."""
    c, big_r, rim, hx = hb.acetabular_centre, hb.acetabular_radius, hb.rim_deg, hb.head_x
    anterior_rim = with_depth(
        [arc(c, big_r, rim, rim, 1)[0], (hx - 0.15 * big_r, 0.3 * big_r), (hx - 0.55 * big_r, 0.85 * big_r)], 20
    )
    posterior_rim = with_depth(
        [arc(c, big_r, rim, rim, 1)[0], (hx + 0.6 * big_r, 0.35 * big_r), (hx + 0.25 * big_r, 1.0 * big_r)], -20
    )
    return [
        proj.tube(anterior_rim, [0.8, 1.0, 0.9], 0.0, density=1.0, additive=True),
        proj.tube(posterior_rim, [0.8, 1.0, 0.9], 0.0, density=1.2, additive=True),
    ]


def symphyseal_surface(proj: Projector, ob: ObturatorMeasures) -> Tube:
    """A sclerotic line on the pubic body's medial face."""
    _, fy = ob.centre
    b_f = ob.half_height
    return proj.tube(
        with_depth([(3.3, fy - 0.7 * b_f), (3.0, fy + 0.6 * b_f)], 55), [1.0, 1.0], 0.0, density=1.0, additive=True
    )


def hemipelvis_landmarks(proj: Projector, hb: HipBoneMeasures, ob: ObturatorMeasures, m: SideMeasures) -> dict:
    """Projected landmarks of one hip bone, with its projector and measures for the renderer."""
    hx, big_r, rim, hc, pw2 = hb.head_x, hb.acetabular_radius, hb.rim_deg, hb.crest_height, hb.half_width
    tdx, tdy = hb.teardrop
    fx, fy = ob.centre
    tub = ob.tuberosity
    return {
        "acetabulum_centre": proj(np.array([[hx, 0.0, 0.0]]))[0],
        "acetabular_radius": big_r,
        "roof_angles_deg": (-35.0, rim),
        "lateral_rim": proj(with_depth(arc(hb.acetabular_centre, big_r, rim, rim, 1), 0))[0],
        "teardrop": proj(np.array([[tdx, tdy, 0.0]]))[0],
        "obturator_centre": proj(np.array([[fx, fy, 15.0]]))[0],
        "crest_lateral": proj(np.array([[pw2, -0.76 * hc, 20.0]]))[0],
        "symphysis": proj(np.array([[0.0, fy, 55.0]]))[0],
        "ischial_tuberosity": proj(np.array([[tub[0], tub[1], -35.0]]))[0],
        "projector": proj,
        "measures": m,
    }


def build_sacrum_and_spine(anat: SubjectAnatomy, pose: Pose) -> list[Bone]:
    """Sacrum (alae, SI joints, foramina, median crest), coccyx, and the L5 and L4 vertebrae."""
    rng = np.random.default_rng([anat.anatomy_seed, 13])
    m = side_measures(anat, "left")
    hc = m.crest_height
    pw = anat.pelvis_width_mm
    proj = Projector(pose, 1.0)
    s1 = -0.74 * hc
    bones: list[Bone] = []

    sacrum = Bone("sacrum")
    # half outline: S1 body, the ala curving up and out to the top of the SI joint, the joint's
    # auricular curve down and in, then the tapering lower sacrum to the apex
    half = [
        (22, s1 - 2),
        (0.09 * pw, s1 - 6),
        (0.14 * pw, s1 - 12),
        (0.178 * pw, s1 - 10),
        (0.186 * pw, s1 + 6),
        (0.178 * pw, s1 + 26),
        (0.160 * pw, s1 + 46),
        (0.125 * pw, s1 + 62),
        (0.075 * pw, s1 + 80),
        (0.035 * pw, s1 + 95),
        (0.0, s1 + 102),
    ]
    outline = [(x, y) for x, y in half] + [(-x, y) for x, y in reversed(half[:-1])]
    sacrum.slabs.append(proj.slab(with_depth(outline, -70), 11.0, 1.0, density=0.75, fossa=0.25, rim_mm=10.0))
    # anterior sacral foramina in paired rows converging downwards, each with a sclerotic upper arc
    for dy, fx, fr in [(22, 0.085, 5.0), (41, 0.075, 4.4), (58, 0.064, 3.8), (73, 0.053, 3.2)]:
        for sgn in (-1, 1):
            cx, cy = sgn * fx * pw, s1 + dy + rng.normal(0, 0.8)
            ctr = proj(np.array([[cx, cy, -70]]))[0]
            sacrum.holes.append(Hole(ctr, fr, rim=0.15))
            a = np.radians(np.linspace(200, 340, 9))  # the upper margin, concave downwards
            arc_pts = np.column_stack([cx + 1.25 * fr * np.cos(a), cy + 1.1 * fr * np.sin(a)])
            sacrum.lines.append(proj.tube(with_depth(arc_pts, -70), 0.8, 0.0, 0.9, True, smooth=0))
    # S1 superior endplate seen obliquely: a thin ellipse
    t = np.linspace(0, 2 * np.pi, 30)
    end = np.column_stack([23 * np.cos(t), s1 + 3 + 4.5 * np.sin(t)])
    sacrum.lines.append(proj.tube(with_depth(end, -60), 0.8, 0.0, density=1.0, additive=True, smooth=0))
    # median sacral crest: a faint, slightly beaded midline ridge
    crest = [(0.0, s1 + 12), (0.4, s1 + 35), (0.0, s1 + 58), (-0.3, s1 + 80)]
    sacrum.lines.append(proj.tube(with_depth(crest, -90), [1.8, 1.5, 1.4, 1.0], 0.0, 0.55, True))
    # sacroiliac joints: two sclerotic margins (sacral and iliac side) with a lucent cleft between
    for sgn in (-1, 1):
        joint = np.array([(x, y) for x, y in half[3:8]])
        for off, dens in ((0.5, 1.2), (-4.5, 1.0)):
            pts = [(sgn * (x + off), y) for x, y in joint]
            sacrum.lines.append(proj.tube(with_depth(pts, -70), [0.9, 1.1, 1.1, 1.0, 0.8], 0.0, dens, True))
        cleft = chaikin(np.array([(sgn * (x - 2.0), y) for x, y in joint]), 2)
        for x, y in cleft[1:-1:2]:
            sacrum.holes.append(Hole(proj(np.array([[x, y, -70]]))[0], 1.6))
    bones.append(sacrum)

    coccyx = Bone("coccyx")
    coccyx.tubes.append(
        proj.tube(
            with_depth([(0, s1 + 104), (0.5, s1 + 112), (1.0, s1 + 119), (1, s1 + 124)], -80),
            [5.5, 4.5, 3.8, 2.5],
            1.0,
            density=0.8,
        )
    )
    bones.append(coccyx)

    width = 26.0 if anat.sex == "M" else 24.0
    top = s1 - 12.0
    for level, stout in (("L5", 1.0), ("L4", 0.75), ("L3", 0.6)):
        bottom, top = top, top - 27.0
        bones.extend(lumbar_vertebra(proj, level, width, top, bottom, stout))
        top -= 10.0 + 1.0 * stout  # disc space
        width -= 1.2
    return bones


def lumbar_vertebra(proj: Projector, level: str, width: float, top: float, bottom: float, stout: float) -> list[Bone]:
    """A lumbar vertebra in AP: the body (a waisted elliptic cylinder with endplates) and, as a
    separate bone behind it (so the two overlap additively), the neural arch: oval pedicle rings
    over the upper body, laminae, articular processes with the oblique facet joints at the disc
    level, transverse processes (L5's broad) and the spinous process as a midline teardrop."""
    v = Bone(level)
    t3 = proj.world(np.array([[0.0, top, 0.0], [0.0, bottom, 0.0]]))
    ends = t3[:, :2] + proj.shift
    v.bodies.append(Body(ends[0], ends[1], width, 0.66, 1.3, 0.12, waist=0.92, density=0.8))
    t = np.linspace(0, 2 * np.pi, 28)
    # endplate rims seen slightly obliquely: thin ellipses (L5's lower one, over the L5-S1 disc,
    # is tilted the most); the posterior rim a little higher than the anterior
    for y_end, minor, dens in ((top, 1.6, 0.35), (bottom, 3.6 if level == "L5" else 1.8, 0.35)):
        ell = np.column_stack([(width - 1.0) * np.cos(t), y_end + minor * np.sin(t)])
        v.lines.append(proj.tube(with_depth(ell, 0), 0.6, 0.0, dens, True, smooth=0))
    arch = Bone(f"{level}_arch")
    for sgn in (-1, 1):
        px = sgn * (width - 10.0)
        ped = np.column_stack([px + 4.0 * np.cos(t), top + 9.0 + 6.0 * np.sin(t)])
        arch.lines.append(proj.tube(with_depth(ped, -30), 1.0, 0.0, 1.1, True, smooth=0))
        arch.tubes.append(
            proj.tube(
                np.array([(px, top + 9.0, -22.0), (px, top + 9.0, -38.0)]), [3.6, 3.6], 0.8, density=0.5, smooth=0
            )
        )  # the pedicle end-on
        # transverse process: L5's broad and sweeping up and out, L4's and L3's slenderer and longer
        reach = 44 + 8 * (1.0 - stout) + 4 * stout
        tp = [
            (px + sgn * 2, top + 10),
            (sgn * (0.62 * reach + 8), top + 8 - 3 * stout),
            (sgn * (reach + 6), top + 5 - 6 * stout),
        ]
        arch.tubes.append(
            proj.tube(
                with_depth(tp, -35),
                [7.0 * stout + 1.5, 4.0 * stout + 2.0, 2.2 * stout + 1.8],
                0.9,
                density=0.6,
                flat=0.7,
            )
        )
        # lamina: a thin plate from the pedicle down and in to the spinous process, over the lower body
        lam = [
            (px + sgn * 1, top + 13),
            (sgn * 4, top + 17),
            (sgn * 3, bottom + 1),
            (sgn * (width - 15), bottom - 2),
            (px + sgn * 2, bottom - 9),
        ]
        arch.slabs.append(proj.slab(with_depth(lam, -50), 2.2, 0.7, density=0.5, flat=1.0, smooth=2))
        # articular processes and the facet joint at the disc below: the inferior process of this
        # vertebra (medial) against the superior process of the next (lateral), a thin lucent cleft
        # between two dense margins, running obliquely down and in
        fx = sgn * (width - 12.5)
        inf_p = [(fx, bottom - 6), (fx - sgn * 1.0, bottom + 1), (fx - sgn * 2.0, bottom + 6)]
        arch.tubes.append(proj.tube(with_depth(inf_p, -45), [3.2, 2.6, 1.6], 0.8, density=0.45, smooth=0))
        sup_p = [(fx + sgn * 6.5, bottom + 9), (fx + sgn * 6.0, bottom + 3), (fx + sgn * 5.0, bottom - 2)]
        arch.tubes.append(proj.tube(with_depth(sup_p, -42), [3.4, 2.8, 1.6], 0.8, density=0.45, smooth=0))
        for off, dens in ((sgn * 2.3, 0.6), (sgn * 3.9, 0.6)):
            arch.lines.append(
                proj.tube(
                    with_depth([(fx + off + sgn * 0.6, bottom - 2), (fx + off - sgn * 0.6, bottom + 6)], -44),
                    [0.55, 0.55],
                    0.0,
                    dens,
                    True,
                    smooth=0,
                )
            )
    # spinous process end-on in the midline: a teardrop over the lower body, broad above, tapering down
    arch.tubes.append(
        proj.tube(
            with_depth([(0, top + 14), (0, top + 19), (0, bottom + 6)], -70),
            [2.2, 4.0, 1.4],
            1.3,
            density=0.6,
            smooth=0,
        )
    )
    return [v, arch]


# --------------------------------------------------------------------------- the femur


@dataclass
class FemurModel:
    """One projected proximal femur with what findings and ground truth need."""

    side: str
    bone: Bone  # everything but the head
    groups: list[Tube]  # trabecular groups (oriented texture)
    head_centre: np.ndarray  # (2,) projected
    head_radius: float
    head_frame: np.ndarray  # 3x3: head-local (canonical femur) direction -> world direction
    landmarks: dict[str, np.ndarray]
    shaft_angle_deg: float  # projected shaft axis from vertical, lateral positive
    neck_length_mm: float  # projected head centre -> neck base (shaft axis) distance
    trochanter_distance_mm: float  # projected head centre -> greater trochanter tip
    prosthesis: list[Bone] = field(default_factory=list)


def leg_rotation(leg: LegPose, shaft_dir: np.ndarray) -> np.ndarray:
    """Rotation about the head centre that places the shaft as the leg pose says."""
    ab = math.radians(leg.abduction_deg)
    el = math.radians(leg.elevation_deg)
    target = np.array([math.sin(ab) * math.cos(el), math.cos(ab) * math.cos(el), math.sin(el)])
    base = rotation_aligning(shaft_dir, np.array([0.0, 1.0, 0.0]))
    # twist about the (vertical) shaft first: external rotation turns anterior (+z) to lateral (+x)
    twist = rotation_about(np.array([0.0, 1.0, 0.0]), math.radians(leg.twist_deg))
    place = rotation_aligning(np.array([0.0, 1.0, 0.0]), target)
    return place @ twist @ base


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields do not compare to one bool
class FemurAxes:
    """The canonical femur (lateral = +x) relative to the head centre: unit axes and sizes (mm)."""

    head_diameter: float
    shaft: np.ndarray  # down the anatomical shaft axis (distal end medial)
    neck: np.ndarray  # along the neck towards the head
    lateral: np.ndarray  # perpendicular to the shaft in the coronal plane, lateral
    base: np.ndarray  # neck base: where the neck axis meets the shaft axis
    neck_length: float  # head centre -> neck base
    anterior: np.ndarray

    @property
    def calcar_side(self) -> np.ndarray:
        """In the femur's plane, perpendicular to the neck towards its inferior (calcar) border."""
        return np.cross(self.neck, self.anterior)


SHAFT_LENGTH_MM = 420.0  # long enough to leave the field of view


def femur_axes(anat: SubjectAnatomy, side: str) -> FemurAxes:
    """The subject's femoral axes: shaft inclination, neck-shaft angle and neck length, jittered per side."""
    rng = np.random.default_rng([anat.anatomy_seed, 14, 0 if side == "right" else 1])
    m = side_measures(anat, side)
    d = 2 * m.head_radius
    alpha = math.radians(7.0 + rng.normal(0, 1.0))  # anatomical shaft axis: distal end medial
    nsa = math.radians(anat.neck_shaft_angle_deg + rng.normal(0, 0.8))
    shaft = np.array([-math.sin(alpha), math.cos(alpha), 0.0])
    neck = np.array([math.sin(-alpha - nsa), math.cos(-alpha - nsa), 0.0])  # towards the head
    lateral = np.array([math.cos(alpha), math.sin(alpha), 0.0])
    neck_len = (1.12 + rng.normal(0, 0.03)) * d
    return FemurAxes(
        head_diameter=d,
        shaft=shaft,
        neck=neck,
        lateral=lateral,
        base=-neck * neck_len,
        neck_length=neck_len,
        anterior=np.array([0.0, 0.0, 1.0]),
    )


def build_femur(anat: SubjectAnatomy, side: str, pose: Pose, with_head: bool = True) -> FemurModel:
    """A proximal femur built from capsules in 3D, rotated by the leg pose and projected.

    Without its head (a hip replacement on that side) the neck, the calcar, the trabecular groups
    and the marks of the head are left out and the prosthesis takes their place.
    """
    m = side_measures(anat, side)
    fa = femur_axes(anat, side)
    leg = leg_rotation(pose.legs[side], fa.shaft)
    proj = Projector(pose, SIDE_SIGN[side], local=leg, origin=np.array([m.head_x, 0.0, 0.0]))
    bone = Bone(f"femur_{side}")
    gt_pts = greater_trochanter_axis(fa)
    lt_root, lt_dir, lt_tip = lesser_trochanter_axis(fa)

    # The renderer merges a bone's primitives in list order (a smooth, not exact, union): the order
    # of the appends below is part of the phantom's pixels.
    if with_head:
        bone.tubes.append(femoral_neck(proj, fa, m))
    bone.tubes.append(greater_trochanter(proj, fa, gt_pts))
    bone.tubes.append(lesser_trochanter(proj, fa, lt_root, lt_dir, lt_tip))
    bone.tubes.append(femoral_shaft(proj, fa, anat.shaft_cortex_mm))
    bone.lines.append(intertrochanteric_crest(proj, fa, lt_root, lt_dir))
    bone.lines.append(intertrochanteric_line(proj, fa))
    groups: list[Tube] = []
    prosthesis: list[Bone] = []
    if with_head:
        bone.lines.append(calcar(proj, fa, m))
        groups = trabecular_groups(proj, fa, m)
        bone.lines.append(physeal_scar(proj, fa, m))
        bone.holes.append(wards_triangle(proj, fa))
    else:
        prosthesis = build_prosthesis(proj, fa)

    pts = femur_landmarks(proj, fa, gt_pts[-1], lt_tip)
    centre2 = pts["head_centre"]
    sd = pts["shaft_distal"] - pts["shaft_top"]
    lateral_sign = SIDE_SIGN[side]
    shaft_angle = math.degrees(math.atan2(lateral_sign * sd[0], sd[1]))
    head_frame = pelvic_rotation(pose) @ np.diag([SIDE_SIGN[side], 1.0, 1.0]) @ leg
    return FemurModel(
        side=side,
        bone=bone,
        groups=groups,
        head_centre=centre2,
        head_radius=m.head_radius,
        head_frame=head_frame,
        landmarks=pts,
        shaft_angle_deg=shaft_angle,
        neck_length_mm=float(np.linalg.norm(pts["neck_base"] - centre2)),
        trochanter_distance_mm=float(np.linalg.norm(pts["greater_trochanter"] - centre2)),
        prosthesis=prosthesis,
    )


def femoral_neck(proj: Projector, fa: FemurAxes, m: SideMeasures) -> Tube:
    """The neck waists just lateral to the head and flares into the trochanters: concave superior and
    inferior borders; slightly flattened front to back. (The head itself is drawn by the renderer.)"""
    d, nk, nl = fa.head_diameter, fa.neck, fa.neck_length
    neck_s = [0.0, 0.95 * m.head_radius, 0.55 * nl, 0.82 * nl, 1.0 * nl]
    neck_r = [0.36 * d, 0.315 * d, 0.295 * d, 0.35 * d, 0.47 * d]
    return proj.tube(
        [-nk * s_ for s_ in neck_s], neck_r, np.array([1.4, 1.6, 2.0, 2.4, 2.4]), density=0.75, flat=0.85, smooth=1
    )


def greater_trochanter_axis(fa: FemurAxes) -> list[np.ndarray]:
    """A mass rising from the lateral shaft cortex (its lateral face continues the shaft's) to a tip
    hooking medially at about the level of the head centre; the last point is the tip."""
    d, sh, lat, base, ant = fa.head_diameter, fa.shaft, fa.lateral, fa.base, fa.anterior
    return [
        base + lat * 0.20 * d + sh * 0.45 * d - ant * 4,
        base + lat * 0.24 * d - sh * 0.15 * d - ant * 5,
        base + lat * 0.21 * d - sh * 0.55 * d - ant * 6,
        base + lat * 0.11 * d - sh * 0.76 * d - ant * 7,
    ]


def greater_trochanter(proj: Projector, fa: FemurAxes, gt_pts: list[np.ndarray]) -> Tube:
    # deeper (front to back) than wide, and as dense as the intertrochanteric region
    d = fa.head_diameter
    return proj.tube(gt_pts, [0.21 * d, 0.24 * d, 0.19 * d, 0.09 * d], 1.2, density=0.7, flat=1.45, smooth=1)


def lesser_trochanter_axis(fa: FemurAxes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Root, direction and tip of the lesser trochanter: a posteromedial prominence at the neck-shaft
    junction, rooted in the shaft (more posterior than medial: half hidden behind the shaft in AP,
    prominent in frog-leg)."""
    d, sh, lat, base, ant = fa.head_diameter, fa.shaft, fa.lateral, fa.base, fa.anterior
    lt_root = base + sh * 0.40 * d - lat * 0.13 * d - ant * 3
    lt_dir = -lat * 0.40 + sh * 0.22 - ant * 0.92
    lt_dir = lt_dir / np.linalg.norm(lt_dir)
    return lt_root, lt_dir, lt_root + lt_dir * 0.55 * d


def lesser_trochanter(proj: Projector, fa: FemurAxes, lt_root, lt_dir, lt_tip) -> Tube:
    d, sh = fa.head_diameter, fa.shaft
    return proj.tube(
        [lt_root - sh * 0.12 * d, lt_root + lt_dir * 0.25 * d + sh * 0.04 * d, lt_tip],
        [0.27 * d, 0.17 * d, 0.09 * d],
        1.3,
        density=0.7,
        flat=0.9,
        smooth=1,
    )


def femoral_shaft(proj: Projector, fa: FemurAxes, cortex: float) -> Tube:
    """Metaphysis to diaphysis: the cortex thickens and cancellous bone gives way to fatty marrow."""
    d, sh, base = fa.head_diameter, fa.shaft, fa.base
    shaft_top = base - sh * 0.12 * d  # its rounded top stays hidden inside the neck base and trochanter
    shaft_end = base + sh * SHAFT_LENGTH_MM
    return proj.tube(
        [shaft_top, base + sh * 0.3 * d, base + sh * 0.9 * d, base + sh * 1.7 * d, base + sh * 2.6 * d, shaft_end],
        [0.27 * d, 0.355 * d, 0.345 * d, 0.325 * d, 0.315 * d, 0.31 * d],
        np.array([2.0, 2.2, 2.6, 0.75 * cortex, cortex, cortex]),
        density=np.array([0.7, 0.7, 0.6, 0.35, 0.22, 0.2]),
        smooth=0,
    )


def intertrochanteric_crest(proj: Projector, fa: FemurAxes, lt_root, lt_dir) -> Tube:
    """Posterior, from the greater trochanter's tip down to the lesser trochanter."""
    d, sh, lat, base, ant = fa.head_diameter, fa.shaft, fa.lateral, fa.base, fa.anterior
    return proj.tube(
        [
            base + lat * 0.14 * d - sh * 0.55 * d - ant * 12,
            base + lat * 0.10 * d - ant * 14,
            base - lat * 0.02 * d + sh * 0.30 * d - ant * 12,
            lt_root + lt_dir * 0.2 * d,
        ],
        [1.3, 1.7, 1.6, 1.2],
        0.0,
        density=0.75,
        additive=True,
    )


def intertrochanteric_line(proj: Projector, fa: FemurAxes) -> Tube:
    """The anterior counterpart of the crest, fainter."""
    d, sh, lat, base, ant = fa.head_diameter, fa.shaft, fa.lateral, fa.base, fa.anterior
    return proj.tube(
        [
            base + lat * 0.20 * d - sh * 0.30 * d + ant * 12,
            base + lat * 0.02 * d + ant * 14,
            base - lat * 0.12 * d + sh * 0.35 * d + ant * 12,
        ],
        [1.0, 1.2, 1.0],
        0.0,
        density=0.45,
        additive=True,
    )


def calcar(proj: Projector, fa: FemurAxes, m: SideMeasures) -> Tube:
    """The thick cortex of the inferior neck curving into the medial shaft cortex."""
    d, nk, nl, sh, lat, base, perp = (
        fa.head_diameter,
        fa.neck,
        fa.neck_length,
        fa.shaft,
        fa.lateral,
        fa.base,
        fa.calcar_side,
    )
    points = [
        -nk * 0.95 * m.head_radius + perp * (0.315 * d - 1.8),
        -nk * 0.55 * nl + perp * (0.295 * d - 2.0),
        -nk * 0.85 * nl + perp * (0.37 * d - 2.6),
        base + sh * 0.15 * d - lat * (0.40 * d - 3.0),
        base + sh * 0.40 * d - lat * (0.38 * d - 3.0),
    ]
    return proj.tube(points, [0.9, 1.4, 1.9, 1.7, 0.6], 0.0, density=0.9, additive=True, smooth=1)


def trabecular_groups(proj: Projector, fa: FemurAxes, m: SideMeasures) -> list[Tube]:
    """Principal compressive (dome -> calcar) and principal tensile (arc to the lateral cortex) groups."""
    d, nk, sh, lat, base = fa.head_diameter, fa.neck, fa.shaft, fa.lateral, fa.base
    p = lambda v: np.asarray(v, float)  # noqa: E731
    head_sup = p([0.25, -0.97, 0.0]) * 0.78 * m.head_radius
    calcar_end = base + sh * 0.35 * d - lat * 0.33 * d
    return [
        proj.tube(
            [head_sup, -nk * 0.2 * d, calcar_end], [0.16 * d, 0.17 * d, 0.10 * d], 0.0, density=0.55, role="compressive"
        ),
        proj.tube(
            [
                p([-0.55, 0.45, 0]) * 0.75 * m.head_radius,
                -nk * 0.5 * d - lat * 0.05 * d + sh * (-0.18 * d),
                base + lat * 0.40 * d + sh * 0.30 * d,
            ],
            [0.07 * d, 0.08 * d, 0.06 * d],
            0.0,
            density=0.45,
            role="tensile",
        ),
    ]


def physeal_scar(proj: Projector, fa: FemurAxes, m: SideMeasures) -> Tube:
    """The closed growth plate: a faint sclerotic line across the head base."""
    nk, perp = fa.neck, fa.calcar_side
    scar_c = -nk * 0.45 * m.head_radius
    scar = [
        scar_c + perp * 0.8 * m.head_radius - nk * 0.15 * m.head_radius,
        scar_c,
        scar_c - perp * 0.8 * m.head_radius - nk * 0.05 * m.head_radius,
    ]
    return proj.tube(scar, [0.6, 0.8, 0.6], 0.0, density=0.8, additive=True)


def wards_triangle(proj: Projector, fa: FemurAxes) -> Hole:
    """The sparser cancellous bone between the compressive, tensile and calcar groups at the base of
    the neck reads slightly more lucent."""
    d, nk, nl, perp = fa.head_diameter, fa.neck, fa.neck_length, fa.calcar_side
    ward = proj((-nk * 0.72 * nl + perp * 0.06 * d)[None])[0]
    return Hole(ward, 0.17 * d)


def femur_landmarks(proj: Projector, fa: FemurAxes, gt_tip: np.ndarray, lt_tip: np.ndarray) -> dict[str, np.ndarray]:
    """Projected landmarks: head centre, neck base, trochanters and two points on the shaft axis."""
    d, sh, base = fa.head_diameter, fa.shaft, fa.base
    return {
        "head_centre": proj(np.zeros((1, 3)))[0],
        "neck_base": proj(base[None])[0],
        "greater_trochanter": proj((gt_tip - sh * 0.085 * d)[None])[0],
        "lesser_trochanter": proj(lt_tip[None])[0],
        "shaft_top": proj(base[None])[0],
        "shaft_distal": proj((base + sh * 150.0)[None])[0],
    }


def build_prosthesis(proj: Projector, fa: FemurAxes) -> list[Bone]:
    """Total hip replacement: metal femoral stem, neck and ball, and the cement mantle."""
    sh, nk, base, lat = fa.shaft, fa.neck, fa.base, fa.lateral
    metal = Bone("prosthesis", material="metal")
    ball_r = 14.0
    metal.tubes.append(proj.tube([np.zeros(3), -nk * 0.1], [ball_r, ball_r], 0.0))
    metal.tubes.append(proj.tube([-nk * 8, base + nk * 4], [6.0, 7.5], 0.0))
    metal.tubes.append(
        proj.tube([base + nk * 6 + lat * 4, base + sh * 40 - lat * 2, base + sh * 130], [9.5, 7.0, 4.0], 0.0)
    )
    # the cement mantle (barium-loaded PMMA) is about as dense as cortical bone
    cement = Bone("cement", material="cement")
    cement.tubes.append(proj.tube([base + sh * 5, base + sh * 138], [12.5, 7.5], 0.0))
    return [metal, cement]


# --------------------------------------------------------------------------- whole-radiograph


@dataclass
class PelvisGeometry:
    """All projected bones plus landmarks for one radiograph (before findings are applied)."""

    bones: list[Bone]
    femurs: dict[str, FemurModel]
    hemipelvis: dict[str, dict]
    pose: Pose


def build_geometry(spec: RadiographSpec, pose: Pose, prosthesis_side: str | None) -> PelvisGeometry:
    anat = spec.anatomy
    bones: list[Bone] = []
    hemis: dict[str, dict] = {}
    femurs: dict[str, FemurModel] = {}
    bones.extend(build_sacrum_and_spine(anat, pose))
    for side in ("right", "left"):
        bone, lm = build_hemipelvis(anat, side, pose)
        bones.append(bone)
        hemis[side] = lm
        fem = build_femur(anat, side, pose, with_head=(side != prosthesis_side))
        femurs[side] = fem
        bones.append(fem.bone)
        if fem.prosthesis:
            bones.extend(fem.prosthesis)
            bones.append(acetabular_cup(lm))
    return PelvisGeometry(bones, femurs, hemis, pose)


def acetabular_cup(lm: dict) -> Bone:
    """Metal hemispherical cup opening inferolaterally (~40-45 deg) at the acetabulum."""
    cup = Bone("cup", material="metal")
    c = lm["acetabulum_centre"]
    sign = 1.0 if lm["lateral_rim"][0] > c[0] else -1.0
    # a thick arc: the shell seen from the front; opening faces down and lateral
    pts = []
    for a in np.linspace(-50, 130, 19):
        a_r = math.radians(a - 42.0)
        pts.append((c[0] + sign * 26.0 * math.sin(a_r), c[1] - 26.0 * math.cos(a_r)))
    cup.tubes.append(Tube(np.asarray(pts), np.full(len(pts), 2.6), 0.0, 1.0, np.ones(len(pts) - 1)))
    return cup
