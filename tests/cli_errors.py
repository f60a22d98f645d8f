"""Shared check of the command line's error contract: exit status 2 and one line on stderr."""

from mask_rcnn_tf import cli


def cli_fails(capsys, *argv):
    """Runs `mask-rcnn ARGV`, checks status 2 and a single `mask-rcnn <cmd>: error:` line;
    returns the message after that prefix."""
    code = cli.main([str(arg) for arg in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    prefix = f"mask-rcnn {argv[0]}: error: "
    assert err.startswith(prefix), err
    return err[len(prefix):].rstrip("\n")
