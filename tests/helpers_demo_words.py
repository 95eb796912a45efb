"""Common English words (the most frequent words of modern English plus the archaic forms of older
prose such as unto, thee, hath), to judge whether generated text is made of real words."""

COMMON_ENGLISH_WORDS = frozenset("""
a about above after again against all also am among an and another any are as at away
back be because been before began behind being below beside between both brought but by
call called came can cannot come comes coming could day days did do does done down
each earth even ever every eyes face far father few find first for forth found four from
gave get give given go god goes going gone good great had hand hands has have he head hear
heard heart heaven her here him himself his house how i if in into is it its itself
just keep kept king know known land large last later lay lead left let life light like
little live long look lord love made make man many may me men might mine more most mother
much must my name near neither never new night no none nor not nothing now of off old on
once one only or other our out over own people place put said same saw say says see seen
send sent set shall she should since so some son sons soon still such take taken tell than
that the their them themselves then there therefore these they thing things this those
though three through thus time times to together too took toward two under until up upon
us very was water way we well went were what when where whether which while white who
whom whose why will with within without word words work world would year years yet you
young your
unto thee thou thy thine ye hath doth art shalt wilt saith spake sayest didst hast
behold thereof therein wherefore hither thither whither lo verily yea nay amen
brethren children daughter daughters servant servants people city cities field fields
fire bread blood sea mountain mountains gold silver voice spirit soul holy sin sins
among against evil peace power glory fear war battle host hosts priest priests tribe
tribes law laws commandment commandments covenant offering offerings altar temple tabernacle
morning evening wife wives woman women brother brothers seed camp gate gates wall walls
side sword stone stones tree trees wood flesh bones body strength mercy judgment truth
speak spoke spoken answered answer arose rose stood sat dwelt dwell went go walk walked
bring bare bear born die died dead slay slew smote destroy destroyed build built
give gave hear heard eat ate drink drank pass passed turn turned return returned
""".split())
