"""Macros for the examples."""

def banner(name, src, width = 40):
    """Frames the text of `src` between two rules of `width` dashes."""
    rule = "-" * width
    genrule(
        name = name,
        srcs = [src],
        outs = [name + ".txt"],
        cmd = "{ echo '%s'; cat $<; echo '%s'; } > $@" % (rule, rule),
    )
