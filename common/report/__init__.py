"""The run report, shared by the simulator and a deployed server: one typed `record.RunRecord`
in, summary.json (scripts), sites.md and report.md (people) and a learning-curve PNG out.

`record` (the run record), `privacy` (its privacy outcome: each site's own ledger and budget, and
what each site's guarantee came to: lifetime budget spent and left, policy, noise source),
`policy` (the site policy as a report states it), `coverage` (which released values the
guarantee covers, from `common.releases`), `comparison` (which metrics a run is compared on, did
federation help), `tables` (markdown tables), `markdown` (report.md), `plots` (learning curve),
`writer` (writes it all).
"""
