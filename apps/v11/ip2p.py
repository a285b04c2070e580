"""Instruct-pix2pix (control_v11e_sd15_ip2p): the input image itself is the control; the prompt is an
instruction ("make it winter")."""
from apps.v11.common import v11_app

APP = v11_app("v11_ip2p", "Instruct Pix2Pix", "cn11_ip2p",
              prompt_placeholder="an instruction, e.g. make it winter",
              notes="The image itself is the control; write what to change as an instruction (*make it winter*, "
                    "*turn it into a watercolour*).")
