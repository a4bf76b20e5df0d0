"""Rebuild the small tokenizer that ships with lapa (`src/lapa/vla/assets/tokenizer/tokenizer.json`).

    .venv/bin/python scripts/build_tokenizer.py

A script outside the package: it reads every instruction the simulator can phrase
(`lapa.sim.tasks.all_instructions`), and `lapa.vla` itself must never import the simulator (sim sits
above vla).

What it builds: a byte-level BPE (GPT-2 style), so it encodes any Unicode text without unknown tokens
and decodes it back exactly; the merges are learnt from every instruction the simulator can produce
(all templates x colours x shapes x directions), the VLA prompt and some general English, so that the
words the tiny debug models see are single tokens. Special tokens: <pad> = 0, <s> (BOS) = 1,
</s> (EOS) = 2. Training is deterministic, so rebuilding from unchanged inputs gives the same file.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from lapa.sim.tasks import all_instructions

OUT = Path(__file__).resolve().parents[1] / "src" / "lapa" / "vla" / "assets" / "tokenizer" / "tokenizer.json"
VOCAB_SIZE = 2048
SPECIALS = ["<pad>", "<s>", "</s>"]
PROMPT = "What action should the robot take to {instruction}?"

# General English, so that text outside the simulator still tokenises compactly (coverage itself comes
# from the byte-level alphabet, not from this text).
ENGLISH = """
The robot arm stands beside a wooden table in a bright kitchen. On the table there are cups, plates,
bowls, a sponge, a towel, a banana, an apple, a carrot, a spoon, a fork, a knife and a small pot.
A person asks the robot to help: open the drawer, close the cabinet door, wipe the counter, turn on
the faucet, turn off the stove, put the bowl in the sink, move the can to the shelf, and fold the
cloth. The robot looks at the scene through a camera, reads the instruction, and decides what to do.
It moves its gripper forward and backward, up and down, left and right, and it rotates its wrist.
When the gripper closes around an object, the robot can lift it, carry it and place it somewhere else.
Good policies are careful: they avoid collisions, they do not drop things, and they finish quickly.
Learning from videos without action labels is hard, because a video shows what happened but not
which motor commands made it happen. Latent actions describe the change between two frames; a model
that predicts them from an image and a sentence learns a lot about how the world moves.
Questions and answers: What should I do next? Where is the red block? Which one is bigger, the left
cup or the right cup? How many objects are on the table? Please hand me the green marker. Thank you!
Numbers and time: one, two, three, four, five, six, seven, eight, nine, ten, 0 1 2 3 4 5 6 7 8 9,
first, second, third, last, again, before, after, while, until, then, now, later, today, tomorrow.
Common words: the of and to in is you that it he was for on are as with his they at be this have
from or had by hot word but what some we can out other were all there when up use your how said an
each she which do their time if will way about many then them write would like so these her long
make thing see him two has look more day could go come did number sound no most people my over know
water than call first who may down side been now find any new work part take get place made live
where after back little only round man year came show every good me give our under name very through
just form sentence great think say help low line differ turn cause much mean before move right boy
old too same tell does set three want air well also play small end put home read hand port large
spell add even land here must big high such follow act why ask men change went light kind off need
house picture try us again animal point mother world near build self earth father head stand own
page should country found answer school grow study still learn plant cover food sun four between
state keep eye never last let thought city tree cross farm hard start might story saw far sea draw
left late run don't while press close night real life few north open seem together next white
children begin got walk example ease paper group always music those both mark often letter until
mile river car feet care second book carry took science eat room friend began idea fish mountain
stop once base hear horse cut sure watch colour color face wood main enough plain girl usual young
ready above ever red list though feel talk bird soon body dog family direct pose leave song measure
door product black short numeral class wind question happen complete ship area half rock order fire
south problem piece told knew pass since top whole king space heard best hour better true during
hundred five remember step early hold west ground interest reach fast verb sing listen six table
travel less morning ten simple several vowel toward war lay against pattern slow center love person
money serve appear road map rain rule govern pull cold notice voice unit power town fine certain fly
fall lead cry dark machine note wait plan figure star box noun field rest correct able pound done
beauty drive stood contain front teach week final gave green oh quick develop ocean warm free minute
strong special mind behind clear tail produce fact street inch multiply nothing course stay wheel
full force blue object decide surface deep moon island foot system busy test record boat common gold
possible plane stead dry wonder laugh thousand ago ran check game shape equate miss brought heat snow
tire bring yes distant fill east paint language among grand ball yet wave drop heart am present heavy
dance engine position arm wide sail material size vary settle speak weight general ice matter circle
pair include divide syllable felt perhaps pick sudden count square reason length represent art
subject region energy hunt probable bed brother egg ride cell believe fraction forest sit race window
store summer train sleep prove lone leg exercise wall catch mount wish sky board joy winter sat
written wild instrument kept glass grass cow job edge sign visit past soft fun bright gas weather
month million bear finish happy hope flower clothe strange gone jump baby eight village meet root buy
raise solve metal whether push seven paragraph third shall held hair describe cook floor either
result burn hill safe cat century consider type law bit coast copy phrase silent tall sand soil roll
temperature finger industry value fight lie beat excite natural view sense ear else quite broke case
middle kill son lake moment scale loud spring observe child straight consonant nation dictionary milk
speed method organ pay age section dress cloud surprise quiet stone tiny climb cool design poor lot
experiment bottom key iron single stick flat twenty skin smile crease hole trade melody trip office
receive row mouth exact symbol die least trouble shout except wrote seed tone join suggest clean
break lady yard rise bad blow oil blood touch grew cent mix team wire cost lost brown wear garden
equal sent choose fell fit flow fair bank collect save control decimal gentle woman captain practice
separate difficult doctor please protect noon whose locate ring character insect caught period
indicate radio spoke atom human history effect electric expect crop modern element hit student
corner party supply bone rail imagine provide agree thus capital won't chair danger fruit rich thick
soldier process operate guess necessary sharp wing create neighbor wash bat rather crowd corn compare
poem string bell depend meat rub tube famous dollar stream fear sight thin triangle planet hurry
chief colony clock mine tie enter major fresh search send yellow gun allow print dead spot desert
suit current lift rose continue block chart hat sell success company subtract event particular deal
swim term opposite wife shoe shoulder spread arrange camp invent cotton born determine quart nine
truck noise level chance gather shop stretch throw shine property column molecule select wrong gray
repeat require broad prepare salt nose plural anger claim continent oxygen sugar death pretty skill
women season solution magnet silver thank branch match suffix especially fig afraid huge sister steel
discuss forward similar guide experience score apple bought led pitch coat mass card band rope slip
win dream evening condition feed tool total basic smell valley nor double seat arrive master track
parent shore division sheet substance favor connect post spend chord fat glad original share station
dad bread charge proper bar offer segment slave duck instant market degree populate chick dear enemy
reply drink occur support speech nature range steam motion path liquid log meant quotient teeth shell
neck
"""

# Instructions in the style of robot datasets (Open X-Embodiment, Bridge), beyond the simulator's.
ROBOT = """
open the top drawer. close the middle drawer. put the spoon in the pot. pick up the sponge and wipe the
table. place the carrot on the plate. move the blue towel to the left side of the table. flip the pot
upright. put the eggplant in the basket. stack the green block on the red block. knock the can over.
push the button. pull the handle. slide the door open. turn the knob clockwise. unfold the cloth.
put the corn into the bowl. take the lid off the pan. put the mushroom in the silver pot. sweep the
beans into the dustpan. pour the water into the cup. hang the mug on the rack. insert the peg into
the hole. place the apple next to the banana. put the yellow cylinder beside the purple cube.
Pick up the RED cube! Push the Blue Cylinder to the LEFT. Put the orange cube on the white cube.
"""


def build() -> Tokenizer:
    instructions = all_instructions()
    corpus = instructions + [PROMPT.format(instruction=i) for i in instructions] + [ENGLISH, ROBOT]
    corpus += [ENGLISH.upper(), ENGLISH.title()]  # capitalised words too
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    # `add_special_tokens=True` prepends BOS, as Llama's tokenizer does (the VLA itself never asks for it).
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]),
    ])
    return tokenizer


if __name__ == "__main__":
    tok = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(OUT))
    print(f"wrote {OUT} ({tok.get_vocab_size()} tokens)")
