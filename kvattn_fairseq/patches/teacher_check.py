"""--criterion attention_transfer: fairseq-train builds its Trainer right after the criterion, from the model it
built before (and before it loads a checkpoint or reads a batch): the teacher is checked against that model there,
so that a wrong --teacher-checkpoint is one line before training starts, not an error inside the first step (which
fairseq answers with crash.pt).  A wrapper factory for patches.PATCHES."""


def check_teacher(init):
    """fairseq.trainer.Trainer.__init__"""
    def checked(self, cfg, task, model, criterion, *args, **kwargs):
        from ..criterions.attention_transfer import AttentionTransferCriterion

        if isinstance(criterion, AttentionTransferCriterion):
            criterion.check_student(model)
        init(self, cfg, task, model, criterion, *args, **kwargs)

    return checked
