"""The commands that are not experiments, one module each (``main(argv)``):

train   train one reward model of any registered type          rmgap train
probe   which responses one preference update moves, and why   rmgap probe
data    the shipped datasets, their licences and checksums     rmgap data
transform  token-level shifts of pairs, made offline            rmgap transform
"""
