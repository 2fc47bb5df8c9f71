"""Deployment subcommands (filled in below)."""

import argparse


def add_deploy_commands(sub: argparse._SubParsersAction) -> None:
    return None
