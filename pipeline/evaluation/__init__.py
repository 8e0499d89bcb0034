"""What ``evaluate`` adds to the plain metrics of :mod:`pipeline.evaluate`: ROC and
precision-recall curves with their areas (:mod:`.curves`, computed by scikit-learn), the
pictures a person reads (:mod:`.plots`: the confusion matrix and the curves) and test-time
augmentation (:mod:`.tta`)."""
