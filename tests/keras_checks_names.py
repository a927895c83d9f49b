"""Names of the checks in ``tests/keras_checks.py`` (importable without keras)."""

NAMES = ["check_fresh_model_restore_and_stable_paths", "check_bfloat16_variables_keep_their_bits",
         "check_mismatch_names_the_key",
         "check_save_model_load_model", "check_architecture_only_json_yaml",
         "check_variables_metrics_optimizer_leaves",
         "check_export_to_keras_formats_and_read_keras_archives"]
