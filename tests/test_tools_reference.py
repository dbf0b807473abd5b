"""nnc's encoder tools reproduce NNCodec 2.1.3's bitstreams byte for byte on randomised cases, one batch per
tool (codebook auto/force, bit depth, opt_qp, sparsification). Prints the byte-identical fraction per tool."""
import pytest

import nnc
from support.refsettings import TOOLS, config_from_settings, random_cases

N_CASES = 12


@pytest.mark.reference
@pytest.mark.parametrize("tool", TOOLS)
def test_tool_bitstreams_identical_to_reference(reference, tool):
    cases = random_cases(tool, N_CASES, seed=2024)
    theirs = reference.encode_many(cases)
    same = [nnc.encode(t, config_from_settings(s)) == th for (t, s), th in zip(cases, theirs)]
    print(f"{tool}: {sum(same)}/{len(same)} byte-identical")
    bad = [cases[i][1] for i, ok in enumerate(same) if not ok]
    assert not bad, f"{tool}: differs from the reference for settings {bad}"
