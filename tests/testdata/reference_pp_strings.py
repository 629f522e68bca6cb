"""The pp strings of big_vision's three FlexiViT configs, as data (res=240).

Transcribed from big_vision/configs/proj/flexivit/{i1k_deit3_distill,
i21k_distill,i21k_sup}.py: 16 distinct strings (i21k_distill's student i1k
evals repeat i1k_deit3_distill's). Names say config and use.
"""

REFERENCE_PP = {
    'deit3_train':
        'decode|inception_crop|flip_lr|copy("image", "prof")|resize(240)|value_range|resize(384, key="prof")|value_range(key="prof")|onehot(1000, key="label", key_result="labels")|keep("image", "prof", "labels")',
    'deit3_eval_student':
        'decode|resize(272)|central_crop(240)|value_range(-1, 1)|onehot(1000, key="label", key_result="labels")|keep("image", "prof", "labels")',
    'deit3_eval_student_real':
        'decode|resize(272)|central_crop(240)|value_range(-1, 1)|onehot(1000, key="real_label", key_result="labels")|keep("image", "prof", "labels")',
    'deit3_eval_teacher':
        'decode|resize(432)|central_crop(384)|value_range(outkey="prof")|onehot(1000, key="label", key_result="labels")|keep("image", "prof", "labels")',
    'deit3_eval_teacher_real':
        'decode|resize(432)|central_crop(384)|value_range(outkey="prof")|onehot(1000, key="real_label", key_result="labels")|keep("image", "prof", "labels")',
    'deit3_dist':
        'decode|copy("image", "prof")||resize(272)|central_crop(240)|value_range|resize(432, key="prof")|central_crop(384, key="prof")|value_range(key="prof")||keep("image", "prof")',
    'i21k_distill_train':
        'decode|inception_crop|flip_lr|copy("image", "prof")|resize(240)|value_range(-1, 1)|resize(224, outkey="prof")|value_range(-1, 1, key="prof")|onehot(21843)|keep("image", "prof", "labels")',
    'i21k_distill_eval_student_i21k':
        'decode|resize(272)|central_crop(240)|value_range(-1, 1)|onehot(21843)|keep("image", "prof", "labels")',
    'i21k_distill_eval_teacher_i21k':
        'decode|resize(256)|central_crop(224)|value_range(-1, 1, outkey="prof")|onehot(21843)|keep("image", "prof", "labels")',
    'i21k_distill_eval_teacher_i1k':
        'decode|resize(256)|central_crop(224)|value_range(-1, 1, outkey="prof")|onehot(1000, key="label", key_result="labels")|keep("image", "prof", "labels")',
    'i21k_distill_eval_teacher_real':
        'decode|resize(256)|central_crop(224)|value_range(-1, 1, outkey="prof")|onehot(1000, key="real_label", key_result="labels")|keep("image", "prof", "labels")',
    'i21k_distill_dist':
        'decode|copy("image", "prof")||resize_small(272)|central_crop(240)|value_range(-1, 1)|resize_small(256, key="prof")|central_crop(224, key="prof")|value_range(-1, 1, key="prof")||keep("image", "prof")',
    'i21k_sup_train':
        'decode_jpeg_and_inception_crop(240)|flip_lr|randaug(2,10)|value_range(-1, 1)|onehot(21843)|keep("image", "labels")',
    'i21k_sup_eval_i21k':
        'decode|resize_small(272)|central_crop(240)|value_range(-1, 1)|onehot(21843)|keep("image", "labels")',
    'i21k_sup_eval_i1k':
        'decode|resize_small(272)|central_crop(240)|value_range(-1, 1)|onehot(1000, key="label", key_result="labels")|keep("image", "labels")',
    'i21k_sup_eval_real':
        'decode|resize_small(272)|central_crop(240)|value_range(-1, 1)|onehot(1000, key="real_label", key_result="labels")|keep("image", "labels")',
}

# Strings whose output depends on the example's random seed.
RANDOM = ("deit3_train", "i21k_distill_train", "i21k_sup_train")
