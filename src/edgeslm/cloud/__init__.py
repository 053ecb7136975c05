"""The cloud side of the comparison: a local stand-in for a hosted inference API, emulated networks, and a client
that uses a cloud endpoint as a black-box teacher.

    network.py    network profiles (data files in profiles/, each number with its source)
    proxy.py      the delaying loopback proxy that emulates a profile (tc netem is not available here)
    linkcheck.py  measures the emulated link, so the emulation is checked, not trusted
    tls.py        a self-signed certificate, generated locally, for the TLS option
    server.py     `edgeslm cloud serve`: Hugging Face text-classification and OpenAI /v1/embeddings shapes
    client.py     one HTTP call, timed, with bytes counted at the socket (TCP_INFO)
    costs.py      price lists (prices.toml), energy per query, break-even volume
    compare.py    `edgeslm compare`: device vs cloud, per network profile
    report.py     the compare report (JSON and one self-contained HTML page with SVG plots)
    label.py      `edgeslm label`: the cloud as a teacher, with rate limit, retries, budget and a SQLite cache
"""
