"""Backups that can be trusted: the checkpoint/backup plans and their actions
(dumps, volume tars, quiesced writers), restores, verification and the data-loss
window. Where sets live and how bytes are streamed is ``backout.storage``.
"""
