"""Run quickpbsa's full analysis (pbsa_file: Kalafut-Visscher steps, then its Bayesian refinement) on a
trace CSV, inside quickpbsa's own environment (benchmarks/quickpbsa-env); timed here, printed as JSON.

    python _quickpbsa_run.py TRACES.csv THRESHOLD MAXITER CORES

Counts are the most fluorophores on in the 'fluors_full' trace (quickpbsa's summarize_results);
flags are quickpbsa's (1 or 0: analysed, < 0: excluded, -7: too many arrangements).
"""

import glob
import json
import shutil
import sys
import tempfile
import time
import warnings


def main():
    infile, threshold, maxiter, cores = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    warnings.simplefilter("ignore")
    import numpy as np
    import pandas as pd
    import quickpbsa

    out = tempfile.mkdtemp(prefix="quickpbsa-")
    try:
        t0 = time.perf_counter()
        quickpbsa.pbsa_file(infile, threshold, maxiter, outfolder=out, num_cores=cores)
        seconds = time.perf_counter() - t0
        (result,) = glob.glob(out + "/*_result.csv")
        res = pd.read_csv(result, header=1)  # as quickpbsa's summarize_results reads it
    finally:
        shutil.rmtree(out, ignore_errors=True)
    full = res.loc[res["type"] == "fluors_full"]
    counts = np.asarray(full.loc[:, "0":], dtype=float).max(axis=1)
    print(json.dumps({"seconds": seconds, "id": full["id"].astype(int).tolist(), "count": counts.tolist(),
                      "flag": full["flag"].astype(int).tolist()}))

if __name__ == "__main__":
    main()
