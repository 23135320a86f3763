"""The station's store: its tables, its engine, and the domain commands that are the only writers.

Commands (each one transaction: record change + sync-queue entry + audit entry):

- treatments: start_insertion, start_removal, start_continuation, finalise_treatment, delete_treatment
- scanning: scan_applicator (returns a ScanResult with exactly one outcome)
- applicators: change_status, update_details, create_package, amend_status
- removal: remove_applicator, remove_single_seed, fill_removal_form

Open a station with `store.station.open_station(data_dir)`.
"""
