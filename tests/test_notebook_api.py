"""What notebooks stand on: the ``bf`` namespace, the picture language, step objects
that guide, rich displays, and notebooks that import only ``blockforensics``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

import blockforensics as bf
from blockforensics.methods import StepOrderError

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
BS = 512


def small(seed: int = 1, n_blocks: int = 300) -> tuple[bf.Chain, bf.Workload]:
    import tempfile

    directory = Path(tempfile.mkdtemp()) / "chain"
    return bf.Chain.create(directory), bf.Workload(bf.Volume.zeros(n_blocks * BS, BS), seed)


# ----------------------------------------------------------------------- namespace
def test_every_public_name_resolves_and_modules_stay_modules() -> None:
    import blockforensics.boot
    import blockforensics.consolidate as consolidation

    assert sorted(bf.__all__) == sorted([*bf._HOMES, *bf._SUBPACKAGES])
    assert all(hasattr(bf, name) for name in bf.__all__)
    assert bf.live.branching_chain is not bf.branching_chain  # live and simulated apart
    assert bf.consolidate_point is consolidation.consolidate
    assert bf.boot_disk is blockforensics.boot.boot
    assert {"Volume", "BlockMap", "Chain", "backup", "restore", "diff", "plot_blockmaps",
            "BranchingChain", "HeadStartIncremental"} <= set(bf.__all__)


def test_importing_the_namespace_loads_nothing_heavy() -> None:
    code = ("import sys, blockforensics as bf; "
            "print(sorted(m for m in ('numpy', 'pandas', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_import_only_the_namespace(notebook: Path) -> None:
    code = "\n".join("".join(cell["source"]) for cell in json.loads(notebook.read_text())["cells"]
                     if cell["cell_type"] == "code")
    deep = re.findall(r"^\s*(?:from blockforensics\S* import|import blockforensics\.)\S*.*$",
                      code, flags=re.M)
    assert deep == []
    assert "import blockforensics as bf" in code


# ------------------------------------------------------------------ picture language
def test_names_map_to_fixed_kinds() -> None:
    assert [bf.kind_of(n) for n in ("A1", "Q2", "T", "W3", "copy 1", "recopied", "I2",
                                    "copied early, written again", "wrong at t2",
                                    "preserved", "allocated", "full", "xyz")] == [
        "allocated", "quiesced", "changed", "changed", "copied", "stale", "stored", "stale",
        "damage", "preserved", "allocated", "stored", "other"]
    assert set(bf.MEANING) == set(bf.PALETTE)


def test_grid_shows_each_block_and_states_the_zoom() -> None:
    few = bf.BlockMap.from_positions(12289, [5000, 5001, 5200], 4096)
    ax = bf.plot_blockmaps({"Q1": few, "T": few})
    image = ax.get_images()[0].get_array()
    assert int((image == list(bf.PALETTE).index("quiesced") + 1).sum()) == 3  # 3 cells
    assert "zoomed to blocks 4,992–5,247 of 12,289" in ax.get_xlabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["quiescence writes", "changed / tracked", "not in the set"]
    plt.close("all")


def test_chain_picture_draws_trunk_and_leaves_apart() -> None:
    chain, wl = small(4)
    record = bf.branching_chain(chain, wl)
    ax = record.plot_chain()
    lines = ax.get_lines()  # one marker per point, in creation order, y = -lane
    assert [line.get_ydata()[0] for line in lines] == [0, -1, 0, -1]  # full, I1, I2, I3
    assert [line.get_markerfacecolor() for line in lines][1] == "white"  # a hollow leaf
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "crash-consistent" in texts and "application-" in texts
    assert "chain chain" not in ax.get_title()
    plt.close("all")


def test_rich_displays_are_pngs() -> None:
    chain, wl = small()
    bf.backup(chain, wl.volume)
    for obj in (wl.allocated, chain):
        assert obj._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.get_fignums()  # nothing left for pyplot to show twice


# ---------------------------------------------------------------- steps that guide
def test_steps_refuse_a_repeat_and_name_what_comes_next() -> None:
    chain, wl = small()
    m = bf.HeadStartIncremental(chain, wl)
    with pytest.raises(StepOrderError, match=r"finish\(\) cannot run now: it comes later; "
                                             r"run next: start\(\)"):
        m.finish()
    m.start()
    with pytest.raises(StepOrderError, match=r"start\(\) cannot run now: it already ran; "
                                             r"run next: head_start\(\) or snapshot\(\)"):
        m.start()
    assert len(chain) == 1  # no second full
    m.live(4)
    m.head_start()
    m.head_start()
    m.snapshot()
    with pytest.raises(StepOrderError, match=r"run next: finish\(\)"):
        m.head_start()
    with pytest.raises(StepOrderError, match=r"already ran.*make a new"):
        m.run()


def test_branching_steps_keep_their_order() -> None:
    chain, wl = small(4)
    m = bf.BranchingChain(chain, wl)
    m.live(10)
    with pytest.raises(StepOrderError, match=r"trunk\(\) cannot run now: it comes later; "
                                             r"run next: snapshot\(\)"):
        m.trunk()
    m.snapshot()
    m.full()  # no quiescence at t1: Q1 is empty, I1 stores nothing
    with pytest.raises(StepOrderError, match=r"full\(\) cannot run now: it already ran; "
                                             r"run next: leaf1\(\)"):
        m.full()
    assert m.leaf1() is not None and m.record.maps["Q1"].count() == 0
    with pytest.raises(StepOrderError, match=r"run next: snapshot\(\)"):
        m.verify()


# ------------------------------------------- the effects the notebooks name, for their seeds
def test_notebook_02_seed_shows_stale_copies_and_fewer_blocks_left_at_t2() -> None:
    chain, wl = small(7)
    a, b = bf.ChangeTracker(wl.volume), bf.ChangeTracker(wl.volume)  # the notebook's first cell
    wl.step(6)
    a.reset()
    wl.step(4)
    a.detach(), b.detach()
    m = bf.HeadStartIncremental(chain, wl, budget=30, policy="oldest")
    m.live(6)
    m.start()
    m.live(8)
    m.head_start()
    m.live(8)
    assert (m.head.copied_early & m.head.remaining).count() > 0  # "copied early, written again"
    m.head_start()
    m.live(6)
    m.head_start()
    m.live(4)
    remaining = m.snapshot()
    last = m.to_copy().iloc[-1]
    assert (last["with head start"], last["without"]) == (48, 117)  # the numbers in the text
    assert m.record.maps["T"] == m.head.copied_early | remaining
    m.finish()
    assert m.record.maps["recopied"].count() > 0
    m.release()


def test_notebook_03_seed_has_quiescence_writes_outside_the_allocation() -> None:
    chain, wl = small(2)
    m = bf.QuiescedFullImage(chain, wl)
    m.live(25)
    a1 = m.snapshot()
    m.live(6)
    m.snapshots[0].write(512 + 100, b"checkpoint: consistent")
    q1 = m.quiesce(4)
    assert (q1 - a1).count() > 0
    m.image()
    assert m.record.stored("full") == a1 | q1
    m.release()


def test_notebook_04_seed_skips_freed_blocks_and_the_naive_chain_is_wrong() -> None:
    chain, wl = small(12)
    m = bf.BranchingChain(chain, wl)
    m.live(20)
    m.snapshot()
    m.quiesce(8)
    m.full()
    m.leaf1()
    m.live(8)
    a2 = m.snapshot()
    m.quiesce(8)
    assert (m.record.maps["T"] - a2).count() > 0  # the "skipped" row
    m.release()
    chain2, wl2 = small(12)
    naive = bf.naive_linear_chain(chain2, wl2, ops_before=20, ops_between=8, quiesce_blocks=8)
    assert naive.maps["leaked"].count() > 0 and naive.maps["wrong at t2"].count() > 0


def test_blocks_left_to_copy_and_bytes_pictures_say_their_numbers() -> None:
    import pandas as pd

    frame = pd.DataFrame({"step": ["t1", "live 1", "copy 1", "t2"],
                          "with head start": [0, 20, 5, 9], "without": [0, 20, 20, 31]})
    ax = bf.plot_to_copy(frame)
    assert [line.get_ydata().tolist() for line in ax.get_lines()[::2]] == [[0, 20, 20, 31],
                                                                          [0, 20, 5, 9]]
    assert any("9 vs 31 blocks left" in t.get_text() for t in ax.texts)
    assert ax.get_lines()[0].get_color() == bf.PALETTE["changed"]
    ax = bf.plot_bytes(bytes(range(256)) * 2, width=64)
    assert ax.get_images()[0].get_array().shape == (8, 64)
    plt.close("all")


def test_sparse_maps_show_only_their_rows_each_labelled() -> None:
    sparse = bf.BlockMap.from_positions(100_000, [5, 70_001], 4096)
    ax = bf.plot_blockmaps({"changed": sparse})
    assert ax.get_images()[0].get_array().shape == (2, 128)  # 2 rows of 782
    assert "only the 2 of 547 rows holding set blocks" in ax.get_xlabel()
    assert {t.get_text() for t in ax.texts} == {"0", "69,888"}
    plt.close("all")
