"""Run folder names (sparselearning/runfolder.py)."""
from sparselearning.runfolder import run_folder


def test_tiny_densities_get_folders_of_their_own():
    """--density 1e-7 and 4e-7 used to share density_0 (rounded to 6 decimals): one run refused the other's folder
    as 'already holds a run', or resumed it. Usual densities keep their names; 1 - 0.8 is still density_0.2."""
    def name(d: float) -> str:
        return run_folder("r", "m", "cifar10", "DST", 1, d).parent.parent.name

    assert [name(d) for d in (0.2, 0.05, 1.0, 1 - 0.8, 0.5)] == ["density_0.2", "density_0.05", "density_1",
                                                                 "density_0.2", "density_0.5"]
    tiny = [1e-7, 4e-7, 1e-9, 1.5e-7, 0.1234567]
    assert [name(d) for d in tiny] == ["density_1e-07", "density_4e-07", "density_1e-09", "density_1.5e-07",
                                       "density_0.1234567"]
