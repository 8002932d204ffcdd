"""The parts of `fedclinic site validate` (entry: `client.validate.validate_site_data`).

`report` (the checks and the human report), `checks` (check builders every layout uses),
`manifest` (the shareable aggregate statistics), and one module per data layout: `dicom`, `msd`,
`medmnist`.
"""
