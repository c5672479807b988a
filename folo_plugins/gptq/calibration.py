"""Calibration text for ``folo quantize``: a file of the user's, or a small built-in sample.

GPTQ only needs activations that look like the model's real inputs, so a few
paragraphs of varied English (prose, dialogue, instructions, numbers, code)
serve a small chat model; a file of text from the target domain serves better.
"""

from __future__ import annotations

from pathlib import Path

BUILTIN_SAMPLE = """\
The river runs slowly through the old town, past the bakery, the school and the market square. \
In the early morning the fishermen push their boats into the water while the first buses \
cross the stone bridge, and the smell of fresh bread drifts along the narrow streets.

Photosynthesis is the process by which green plants turn light into chemical energy. Inside \
the leaves, chlorophyll absorbs sunlight and uses it to combine carbon dioxide and water into \
glucose, releasing oxygen as a by-product. Almost every food chain on Earth depends on it.

"Could you tell me the way to the railway station?" the traveller asked. "Of course," said the \
woman at the kiosk. "Walk straight ahead for two blocks, turn left at the pharmacy, and you will \
see it across the square. The next train to the coast leaves at a quarter past six."

To make a simple tomato soup, soften one chopped onion and two cloves of garlic in olive oil. \
Add a kilogram of ripe tomatoes, a pinch of salt and half a litre of vegetable stock, then \
simmer for twenty minutes. Blend until smooth and finish with fresh basil and black pepper.

Paris is the capital of France, Berlin is the capital of Germany, and Madrid is the capital of \
Spain. Rome, the capital of Italy, was founded, according to legend, in 753 BC. Europe has \
more than forty countries and many of them share the euro as their currency.

The function below returns the largest value in a list, or None when the list is empty:
def largest(values):
    best = None
    for value in values:
        if best is None or value > best:
            best = value
    return best

In 1969 the crew of Apollo 11 landed on the Moon. Neil Armstrong and Buzz Aldrin spent about \
two and a half hours walking on the surface, collecting rocks and setting up experiments, while \
Michael Collins orbited above them in the command module.

A good night's sleep helps memory, mood and concentration. Most adults need seven to nine hours. \
Keeping a regular schedule, avoiding screens late in the evening and limiting coffee after lunch \
are simple habits that make falling asleep easier.

The quarterly report shows revenue of 4.2 million dollars, up twelve percent from last year, \
while costs rose by only five percent. The board expects growth to continue, although higher \
interest rates and a weaker currency may slow demand in the second half.

Dear Sam, thank you for the lovely birthday card and the book about mountain birds. I have \
already read the chapter on eagles twice. We should go hiking together in the spring, when the \
snow has melted and the valleys are green again. Best wishes, Alex.

Machine learning models learn patterns from examples instead of following rules written by hand. \
A language model, for instance, is trained to predict the next word in a text; after reading \
enough text it can answer questions, translate sentences and summarise long documents.

The storm arrived just after midnight. Rain hammered on the windows, the wind bent the tall \
pine trees in the garden, and somewhere in the distance a dog barked at the thunder. By morning \
the sky was clear and the streets were covered with leaves and broken branches.
"""


def split_samples(text: str) -> list[str]:
    """Paragraphs (separated by blank lines) if the text has any, else one sample per line."""
    blocks = text.split("\n\n") if "\n\n" in text.strip() else text.splitlines()
    return [block.strip() for block in blocks if block.strip()]


def calibration_samples(path: str | None, num_samples: int) -> list[str]:
    """Up to ``num_samples`` texts from ``path`` (None: the built-in sample)."""
    if path is None:
        samples = split_samples(BUILTIN_SAMPLE)
    else:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"calibration file {path!r} does not exist")
        samples = split_samples(file.read_text())
        if not samples:
            raise ValueError(f"calibration file {path!r} holds no text")
    return samples[:num_samples]
