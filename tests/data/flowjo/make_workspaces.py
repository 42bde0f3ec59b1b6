"""Writes the FlowJo 10 workspaces of this folder (run from the repository root: python tests/data/flowjo/make_workspaces.py).

They follow the XML FlowJo 10.6 saves (Groups/GroupNode, SampleList/Sample with DataSet, spilloverMatrix,
Transformations, Keywords and the SampleNode's Population tree; the Graph, layout and table elements FlowJo adds
for its windows are left out).  ``ev_panel.wsp`` gates every shape FlowJo writes on synthetic files that the tests
write with evflow; ``flowcal_beads.wsp`` gates FlowCal's real bead file ``beads/flowcal/sample001.fcs``.
"""

import math
import xml.dom.minidom
from pathlib import Path

HERE = Path(__file__).resolve().parent
NS = ('xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:gating="http://www.isac-net.org/std/Gating-ML/v2.0/gating" '
      'xmlns:transforms="http://www.isac-net.org/std/Gating-ML/v2.0/transformations" xmlns:data-type="http://www.isac-net.org/std/Gating-ML/v2.0/datatypes"')
gid = [1000]
def nid():
    gid[0] += 7
    return f"ID{gid[0]}"
def dim(name, lo=None, hi=None):
    a = (f' gating:min="{lo}"' if lo is not None else "") + (f' gating:max="{hi}"' if hi is not None else "")
    return f'<gating:dimension{a}><data-type:fcs-dimension data-type:name="{name}" /></gating:dimension>'
def vert(x, y, tag="vertex"):
    return f'<gating:{tag}><gating:coordinate data-type:value="{x}" /><gating:coordinate data-type:value="{y}" /></gating:{tag}>'
def pop(name, gate_xml, children="", owner="EV panel"):
    i = nid()
    sub = f"<Subpopulations>{children}</Subpopulations>" if children else ""
    return (f'<Population name="{name}" annotation="" owningGroup="{owner}" expanded="1" sortPriority="10" count="-1">'
            f'<Graph type="Pseudocolor" /><Gate gating:id="{i}">{gate_xml}</Gate>{sub}</Population>')
def rect(dims, inside=1):
    return f'<gating:RectangleGate eventsInside="{inside}" userDefined="1" percentX="0" percentY="0">{"".join(dims)}</gating:RectangleGate>'
def poly(x, y, verts, quad=-1):
    return (f'<gating:PolygonGate eventsInside="1" userDefined="1" quadId="{quad}" gateResolution="256">{dim(x)}{dim(y)}'
            + "".join(vert(a, b) for a, b in verts) + "</gating:PolygonGate>")
def ellipse(x, y, c, f, a):
    cx, cy = c
    fx, fy = f
    th = math.atan2(fy, fx)
    u = (math.cos(th), math.sin(th))
    w = (-math.sin(th), math.cos(th))
    cf = math.hypot(fx, fy)
    b = math.sqrt(a * a - cf * cf)
    foci = vert(cx - fx, cy - fy) + vert(cx + fx, cy + fy)
    edge = "".join(vert(round(cx + s * r * e[0], 6), round(cy + s * r * e[1], 6)) for r, e in ((a, u), (b, w)) for s in (-1, 1))
    return (f'<gating:EllipsoidGate eventsInside="1" userDefined="1">{dim(x)}{dim(y)}<gating:foci>{foci}</gating:foci>'
            f'<gating:edge>{edge}</gating:edge></gating:EllipsoidGate>')
def boolean(tag, name, deps):
    d = "".join(f'<Dependent name="{x}" />' for x in deps)
    return (f'<{tag} name="{name}" annotation="" owningGroup="EV panel" expanded="0" sortPriority="10" count="-1">'
            f'<Graph type="Pseudocolor" /><Dependents>{d}</Dependents></{tag}>')

F1, F2, F3 = "Comp-FL1-A", "Comp-FL2-A", "Comp-FL3-A"
def tree(shift, owner):
    q = [("Q1: Comp-FL1-A- , Comp-FL2-A+", (None, 1500), (800, None)), ("Q2: Comp-FL1-A+ , Comp-FL2-A+", (1500, None), (800, None)),
         ("Q3: Comp-FL1-A+ , Comp-FL2-A-", (1500, None), (None, 800)), ("Q4: Comp-FL1-A- , Comp-FL2-A-", (None, 1500), (None, 800))]
    quads = "".join(pop(n, rect([dim(F1, *a), dim(F2, *b)])) for n, a, b in q)
    kids = (pop("CD9+", rect([dim(F3, 500)]))
            + quads
            + pop("Ellipse", ellipse(F1, F2, (140, 140), (15, 12), 30), children=pop("Bright", rect([dim(F3, 2000, 200000)])))
            + pop("CQ: Comp-FL1-A+ , Comp-FL2-A+", poly(F1, F2, [(1500, 800), (3000, 1200), (10000, 2000), (262144, 2000), (262144, 262144), (1500, 262144)], quad=0))
            + pop("Not debris", rect([dim("FSC-A", None, 20000 + shift), dim("SSC-A", None, 300)], inside=0))
            + boolean("AndNode", "Q2 and Ellipse", ["Cells/Q2: Comp-FL1-A+ , Comp-FL2-A+", "Cells/Ellipse"])
            + boolean("OrNode", "Q1 or Q3", ["Cells/Q1: Comp-FL1-A- , Comp-FL2-A+", "Cells/Q3: Comp-FL1-A+ , Comp-FL2-A-"])
            + boolean("NotNode", "not CD9+", ["Cells/CD9+"]))
    cells = [(10000 + shift, 80), (150000, 60), (240000, 5000), (120000, 90000), (8000, 2000)]
    return pop("Cells", poly("FSC-A", "SSC-A", cells), children=kids, owner=owner)

def xforms(decades):
    t = ('<transforms:linear transforms:minRange="0" transforms:maxRange="262144" gain="1"><data-type:parameter data-type:name="FSC-A" /></transforms:linear>'
         f'<transforms:log transforms:offset="1" transforms:decades="{decades}"><data-type:parameter data-type:name="SSC-A" /></transforms:log>'
         '<transforms:linear transforms:minRange="0" transforms:maxRange="262144" gain="1"><data-type:parameter data-type:name="Time" /></transforms:linear>')
    for pre in ("", "Comp-"):
        t += (f'<transforms:biex transforms:length="256" transforms:maxRange="262144" transforms:neg="0" transforms:width="-100" transforms:pos="4.418540"><data-type:parameter data-type:name="{pre}FL1-A" /></transforms:biex>'
              f'<transforms:logicle transforms:length="256" transforms:T="262144" transforms:W="0.5" transforms:M="4.5" transforms:A="0"><data-type:parameter data-type:name="{pre}FL2-A" /></transforms:logicle>'
              f'<transforms:fasinh transforms:length="256" transforms:maxRange="262144" transforms:T="262144" transforms:M="5" transforms:A="0" transforms:W="1"><data-type:parameter data-type:name="{pre}FL3-A" /></transforms:fasinh>')
    return f"<Transformations>{t}</Transformations>"

SPILL = [[1, 0.12, 0.02], [0.05, 1, 0.15], [0.0, 0.08, 1]]
def matrix():
    d = ["FL1-A", "FL2-A", "FL3-A"]
    ps = "".join(f'<data-type:parameter data-type:name="{x}" userProvidedCompInfix="Comp-{x}" />' for x in d)
    rows = "".join(f'<transforms:spillover data-type:parameter="{a}" userProvidedCompInfix="Comp-{a}">' + "".join(
        f'<transforms:coefficient data-type:parameter="{b}" transforms:value="{SPILL[i][j]}" />' for j, b in enumerate(d)) + "</transforms:spillover>"
        for i, a in enumerate(d))
    return (f'<transforms:spilloverMatrix spectral="0" prefix="Comp-" name="EV comp" editable="1" color="#c0c0c0" version="FlowJo-10.6.2" '
            f'status="FINALIZED" transforms:id="a1b2c3" suffix=""><data-type:parameters>{ps}</data-type:parameters>{rows}</transforms:spilloverMatrix>')
def keywords(n):
    k = [("FJ_FCS_VERSION", "3.1"), ("$PAR", "6"), ("$TOT", str(n)), ("$DATATYPE", "F")]
    for i, c in enumerate(["FSC-A", "SSC-A", "FL1-A", "FL2-A", "FL3-A", "Time"], 1):
        k += [(f"$P{i}N", c), (f"$P{i}R", "262144"), (f"$P{i}B", "32"), (f"$P{i}E", "0,0")]
    return "<Keywords>" + "".join(f'<Keyword name="{a}" value="{b}" />' for a, b in k) + "</Keywords>"
def sample(sid, name, n, shift, decades, owner):
    return (f'<Sample><DataSet uri="{name}" sampleID="{sid}" />{matrix()}{xforms(decades)}{keywords(n)}'
            f'<SampleNode name="{name}" annotation="" owningGroup="" expanded="1" sortPriority="10" count="{n}" sampleID="{sid}">'
            f'<Graph type="Pseudocolor" /><Subpopulations>{tree(shift, owner)}</Subpopulations></SampleNode></Sample>')
def group(name, ids, gates=""):
    refs = "".join(f'<SampleRef sampleID="{i}" />' for i in ids)
    sub = f"<Subpopulations>{gates}</Subpopulations>" if gates else ""
    return (f'<GroupNode name="{name}" annotation="" owningGroup="{name}" expanded="1" sortPriority="10" count="-1"><Graph type="Pseudocolor" />{sub}'
            f'<Group name="{name}" live="1"><Criteria/><SampleRefs>{refs}</SampleRefs><Keywords/></Group></GroupNode>')
doc = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Workspace version="20.0" flowJoVersion="10.6.2" curGroup="EV panel" {NS}>'
       '<Matrices/><Groups>' + group("All Samples", ["1", "2"]) + group("EV panel", ["1", "2"], tree(0, "EV panel")) + group("Compensation", [])
       + '</Groups><SampleList>' + sample("1", "ev_01.fcs", 20000, 0, 5.42, "EV panel") + sample("2", "ev_02.fcs", 15000, 3000, 5.0, "")
       + '</SampleList></Workspace>\n')


def write(name, text):
    (HERE / name).write_text(xml.dom.minidom.parseString(text).toprettyxml(indent="  "), encoding="utf-8")


write("ev_panel.wsp", doc)

# FlowCal's 8-peak beads (FCS 3.0, FL channels log-amplified, $PnE 4,1: 1 ... 9910 after decoding)
BEAD_CH = ["TIME", "FSC", "SSC", "FL1", "FL2", "FL3", "FSCW", "FSCA"]


def bead_xforms():
    t = "".join(f'<transforms:linear transforms:minRange="0" transforms:maxRange="1024" gain="1"><data-type:parameter data-type:name="{c}" /></transforms:linear>'
                for c in ("FSC", "SSC", "FSCW", "FSCA"))
    t += '<transforms:log transforms:offset="1" transforms:decades="4"><data-type:parameter data-type:name="FL1" /></transforms:log>'
    t += '<transforms:biex transforms:length="256" transforms:maxRange="10000" transforms:neg="0" transforms:width="-10" transforms:pos="4"><data-type:parameter data-type:name="FL2" /></transforms:biex>'
    t += '<transforms:log transforms:offset="1" transforms:decades="4"><data-type:parameter data-type:name="FL3" /></transforms:log>'
    return f"<Transformations>{t}</Transformations>"


def bead_tree():
    q = [("Q1: FL1- , FL2+", (None, 300), (1000, None)), ("Q2: FL1+ , FL2+", (300, None), (1000, None)),
         ("Q3: FL1+ , FL2-", (300, None), (None, 1000)), ("Q4: FL1- , FL2-", (None, 300), (None, 1000))]
    quads = "".join(pop(n, rect([dim("FL1", *a), dim("FL2", *b)]), owner="Beads") for n, a, b in q)
    peaks = pop("Peak 7", ellipse("FL1", "FL3", (196, 208), (4, 4), 10), owner="Beads",
                children=pop("FL2 range", rect([dim("FL2", 10, 5000)]), owner="Beads"))
    kids = (peaks + quads + pop("Dim", rect([dim("FL1", None, 100)]), owner="Beads")
            + boolean("OrNode", "Dim or Q2", ["Singlets/Dim", "Singlets/Q2: FL1+ , FL2+"]).replace("EV panel", "Beads"))
    return pop("Singlets", poly("FSC", "SSC", [(300, 200), (700, 250), (850, 700), (500, 800), (250, 450)]), children=kids, owner="Beads")


bead_kw = "<Keywords>" + "".join(f'<Keyword name="$P{i}N" value="{c}" />' for i, c in enumerate(BEAD_CH, 1)) + "</Keywords>"
bead = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Workspace version="20.0" flowJoVersion="10.6.2" curGroup="Beads" {NS}>'
        '<Matrices/><Groups>' + group("All Samples", ["1"]) + group("Beads", ["1"], bead_tree())
        + '</Groups><SampleList><Sample><DataSet uri="../../../../shared/data/beads/flowcal/sample001.fcs" sampleID="1" />'
        + bead_xforms() + bead_kw + '<SampleNode name="sample001.fcs" annotation="" owningGroup="" expanded="1" sortPriority="10" '
        'count="33024" sampleID="1"><Graph type="Pseudocolor" /><Subpopulations>' + bead_tree() + '</Subpopulations></SampleNode>'
        '</Sample></SampleList></Workspace>\n')
write("flowcal_beads.wsp", bead)
