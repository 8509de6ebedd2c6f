B	initial_hJ%
ª¾ÿ¦¼¾HœŠ½„zî¾