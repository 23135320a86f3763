"""Priority, the hospitals' ERP, as the cloud sees it (only the cloud talks to Priority).

- `adapter`: `PriorityClient`, typed reads and the write-back over Priority's OData REST API.
- `orders`: domain.md's order list rules and the station bundle's lists, as pure functions.
- `fake`: a fake Priority with the same contract, served over HTTP for the demo and the tests.
- `fixtures`: the fake's generated data (three hospitals, two weeks of orders, 2,000 applicators).
"""
